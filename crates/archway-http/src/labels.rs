//! Metric label values from fixed sets.
//!
//! A Prometheus label whose value comes from the client (the method token as received, a
//! path) lets anyone grow the server's memory and every scrape without limit. Labels are
//! therefore `&'static str` from the sets below: an unknown method is `other`, and a route
//! label must be one the application lists.

use http::Method;

/// Every value [`method_label`] returns.
pub const METHOD_LABELS: [&str; 8] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "other",
];

/// The label for a request method: the standard methods by name, anything else `other`.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `candidate` if it is one of `known`, else `other`: for route names computed at run time.
pub fn route_label(candidate: &str, known: &[&'static str]) -> &'static str {
    known
        .iter()
        .find(|k| **k == candidate)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_map_to_a_fixed_set() {
        for (m, label) in [
            (Method::GET, "GET"),
            (Method::PATCH, "PATCH"),
            (Method::OPTIONS, "OPTIONS"),
            (Method::TRACE, "other"),
            (Method::CONNECT, "other"),
            (Method::from_bytes(b"GET2").unwrap(), "other"),
            (Method::from_bytes(b"get").unwrap(), "other"),
            (Method::from_bytes(b"XYZZY-1234567890").unwrap(), "other"),
        ] {
            assert_eq!(method_label(&m), label, "{m}");
            assert!(METHOD_LABELS.contains(&method_label(&m)));
        }
    }

    #[test]
    fn routes_outside_the_known_set_are_other() {
        let known = ["blob", "manifest"];
        assert_eq!(route_label("blob", &known), "blob");
        assert_eq!(route_label("/v2/../etc", &known), "other");
        assert_eq!(route_label("", &known), "other");
    }
}
