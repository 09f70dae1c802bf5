//! The open-file limit: a server holds one descriptor per connection and per open file, and
//! the usual soft limit (1024) is far below what the hard limit allows.

use std::io;

use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};

/// Used when the hard limit is "unlimited", which Linux does not accept as a soft limit.
const UNLIMITED_CAP: u64 = 1 << 20;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit; returns the soft limit now in force.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum.unwrap_or(UNLIMITED_CAP);
    let soft = limit.current.unwrap_or(UNLIMITED_CAP);
    if soft >= hard {
        return Ok(soft);
    }
    setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: limit.maximum,
        },
    )?;
    Ok(hard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn soft_limit_reaches_the_hard_limit() {
        let now = raise_nofile_limit().unwrap();
        let limit = getrlimit(Resource::Nofile);
        assert_eq!(limit.current, Some(now));
        assert_eq!(limit.current, limit.maximum.or(Some(UNLIMITED_CAP)));
        // Idempotent.
        assert_eq!(raise_nofile_limit().unwrap(), now);
    }
}
