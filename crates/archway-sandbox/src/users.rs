//! `USER name[:group]` → numeric ids, read from the image's own `/etc/passwd` and `/etc/group`
//! (never the host's), with Docker's rules: a numeric id needs no entry; a name must have one.

use std::path::Path;

/// The process identity inside the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
    /// The home directory from `/etc/passwd` (`/` when unknown, like Docker).
    pub home: String,
}

/// Resolve `spec` (`""`, `name`, `uid`, `name:group`, `uid:gid`) against the root filesystem.
pub fn resolve(rootfs: &Path, spec: &str) -> Result<Identity, String> {
    let passwd = read(rootfs, "etc/passwd");
    let group = read(rootfs, "etc/group");
    resolve_in(&passwd, &group, spec)
}

fn read(rootfs: &Path, rel: &str) -> String {
    // Resolve inside the root so a symlinked /etc/passwd cannot point at the host's.
    archway_oci::layer::resolve_in_root(rootfs, Path::new(rel), true)
        .ok()
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default()
}

fn entries(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect::<Vec<_>>())
}

pub fn resolve_in(passwd: &str, group: &str, spec: &str) -> Result<Identity, String> {
    let spec = if spec.is_empty() { "root" } else { spec };
    let (user, grp) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let entry = entries(passwd)
        .find(|f| f.len() >= 4 && (f[0] == user || (user.parse::<u32>().is_ok() && f[2] == user)));
    let (uid, mut gid, home, name) = match (&entry, user.parse::<u32>()) {
        (Some(f), _) => {
            let uid = f[2]
                .parse::<u32>()
                .map_err(|_| format!("/etc/passwd has a bad uid for `{}`", f[0]))?;
            let gid = f[3]
                .parse::<u32>()
                .map_err(|_| format!("/etc/passwd has a bad gid for `{}`", f[0]))?;
            (
                uid,
                gid,
                f.get(5).copied().unwrap_or("/").to_owned(),
                Some(f[0].to_owned()),
            )
        }
        (None, Ok(uid)) => (uid, 0, "/".to_owned(), None),
        // An image without /etc/passwd (scratch, static binaries) still runs as root.
        (None, Err(_)) if user == "root" => (0, 0, "/root".to_owned(), None),
        (None, Err(_)) => {
            return Err(format!(
                "unable to find user {user}: no matching entries in the image's /etc/passwd"
            ));
        }
    };
    if let Some(g) = grp {
        gid = match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => entries(group)
                .find(|f| f.len() >= 3 && f[0] == g)
                .and_then(|f| f[2].parse::<u32>().ok())
                .ok_or_else(|| {
                    format!(
                        "unable to find group {g}: no matching entries in the image's /etc/group"
                    )
                })?,
        };
    }
    let mut additional_gids = Vec::new();
    if grp.is_none()
        && let Some(name) = &name
    {
        for f in entries(group) {
            if f.len() >= 4
                && f[3].split(',').any(|m| m == name)
                && let Ok(n) = f[2].parse::<u32>()
                && n != gid
                && !additional_gids.contains(&n)
            {
                additional_gids.push(n);
            }
        }
    }
    Ok(Identity {
        uid,
        gid,
        additional_gids,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\nwww-data:x:33:33:www-data:/var/www:/usr/sbin/nologin\n# comment\napp:x:1000:1000::/home/app:/bin/sh\n";
    const GROUP: &str =
        "root:x:0:\nwww-data:x:33:\napp:x:1000:\ndocker:x:999:app,other\nstaff:x:50:app\n";

    #[test]
    fn names_numbers_and_groups() {
        assert_eq!(
            resolve_in(PASSWD, GROUP, "").unwrap(),
            Identity {
                uid: 0,
                gid: 0,
                additional_gids: vec![],
                home: "/root".into()
            }
        );
        let app = resolve_in(PASSWD, GROUP, "app").unwrap();
        assert_eq!(
            (app.uid, app.gid, app.additional_gids, app.home.as_str()),
            (1000, 1000, vec![999, 50], "/home/app")
        );
        assert_eq!(resolve_in(PASSWD, GROUP, "33").unwrap().home, "/var/www");
        let n = resolve_in(PASSWD, GROUP, "4242:4343").unwrap();
        assert_eq!((n.uid, n.gid, n.home.as_str()), (4242, 4343, "/"));
        let g = resolve_in(PASSWD, GROUP, "app:www-data").unwrap();
        assert_eq!((g.uid, g.gid, g.additional_gids.len()), (1000, 33, 0));
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(
            resolve_in(PASSWD, GROUP, "nobody")
                .unwrap_err()
                .contains("unable to find user nobody")
        );
        assert!(
            resolve_in(PASSWD, GROUP, "app:nogroup")
                .unwrap_err()
                .contains("unable to find group nogroup")
        );
        // A numeric user needs no entry, even in an empty image.
        assert_eq!(resolve_in("", "", "65534").unwrap().uid, 65534);
        assert_eq!(resolve_in("", "", "").unwrap().uid, 0);
        assert!(resolve_in("", "", "app").is_err());
    }
}
