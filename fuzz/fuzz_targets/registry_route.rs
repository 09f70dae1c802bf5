//! Request paths come straight from the network: routing must never panic, and every
//! repository name it accepts must be one the spec allows (so it is safe as a storage path).
#![no_main]

use archway_registry::names::RepoName;
use archway_registry::route::Route;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(Some(route)) = Route::parse(path)
        && let Some(repo) = route.repository()
    {
        let name = repo.as_str();
        assert!(RepoName::parse(name).is_some());
        assert!(!name.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
        assert!(!name.starts_with('_') && !name.contains("/_"));
    }
});
