//! Authentication: Docker's token flow, basic auth, per-repository access lists.

use reqwest::Method;

use crate::support::{Raw, RegistryProcess, bearer, error_code, header, token};

#[test]
fn token_flow_with_several_scopes() {
    let reg = RegistryProcess::start_with_users(5, None, &[]);
    let mut raw = Raw::new(&reg);

    // Challenge on the base endpoint and on a repository endpoint.
    let r = raw.get("/v2/");
    assert_eq!(r.status().as_u16(), 401);
    assert_eq!(
        header(r.headers(), "www-authenticate"),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"archway-registry\"",
            reg.host()
        )
    );
    let r = raw
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .unwrap();
    assert_eq!(
        header(r.headers(), "www-authenticate"),
        format!(
            "Bearer realm=\"http://{}/token\",service=\"archway-registry\",scope=\"repository:team/app:pull,push\"",
            reg.host()
        )
    );
    let (status, code) = error_code(r);
    assert_eq!((status, code.as_str()), (401, "UNAUTHORIZED"));

    // Wrong password at the token endpoint.
    assert_eq!(
        token(&raw, Some(("alice", "no")), &[]).status().as_u16(),
        401
    );
    // `docker login` asks for a token without scope.
    let login = bearer(token(&raw, Some(("alice", "pw")), &[]));
    raw.auth = Some(login);
    assert_eq!(raw.get("/v2/").status().as_u16(), 200);
    // ... which grants nothing on repositories.
    let r = raw
        .req(Method::POST, "/v2/team/app/blobs/uploads/")
        .send()
        .unwrap();
    assert!(header(r.headers(), "www-authenticate").contains("error=\"insufficient_scope\""));

    // One token for two repositories (what a cross-repository mount needs).
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &["repository:team/app:pull,push", "repository:team/base:pull"],
    )));
    let d = raw.push_blob("team/app", b"allowed");
    assert_eq!(
        raw.head(&format!("/v2/team/app/blobs/{d}"))
            .status()
            .as_u16(),
        200
    );
    // Pull on team/base is granted (the blob is simply not there); push is not.
    let (status, code) = error_code(raw.head(&format!("/v2/team/base/blobs/{d}")));
    assert_eq!(status, 404, "{code}");
    let r = raw
        .req(Method::POST, "/v2/team/base/blobs/uploads/")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    // A token for another registry (forged) is rejected.
    raw.auth = Some("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl".to_owned());
    let r = raw.get("/v2/");
    assert_eq!(r.status().as_u16(), 401);
    assert!(header(r.headers(), "www-authenticate").contains("error=\"invalid_token\""));
}

#[test]
fn scopes_are_limited_by_the_access_list() {
    let reg = RegistryProcess::start_with_users(
        5,
        Some(
            "alice team/* pull,push\nalice shared pull\nbob team/* pull\nanonymous public/* pull\n* registry-catalog-never-used pull\n",
        ),
        &[],
    );
    let mut raw = Raw::new(&reg);

    // alice: push to team/app, pull only from shared.
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &["repository:team/app:pull,push repository:shared:pull,push"],
    )));
    let d = raw.push_blob("team/app", b"layer");
    let r = raw
        .req(Method::POST, "/v2/shared/blobs/uploads/")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(header(r.headers(), "www-authenticate").contains("insufficient_scope"));

    // Mount into team/other needs pull on team/app too: with it the mount happens...
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &[
            "repository:team/other:pull,push",
            "repository:team/app:pull",
        ],
    )));
    let r = raw
        .req(
            Method::POST,
            &format!("/v2/team/other/blobs/uploads/?mount={d}&from=team/app"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    // ...without it, the registry falls back to an upload instead of leaking the blob.
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &["repository:team/third:pull,push"],
    )));
    let r = raw
        .req(
            Method::POST,
            &format!("/v2/team/third/blobs/uploads/?mount={d}&from=team/app"),
        )
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);

    // bob: pull yes, push no (the token simply leaves push out).
    raw.auth = Some(bearer(token(
        &raw,
        Some(("bob", "pw")),
        &["repository:team/app:pull,push"],
    )));
    assert_eq!(
        raw.head(&format!("/v2/team/app/blobs/{d}"))
            .status()
            .as_u16(),
        200
    );
    assert_eq!(
        raw.req(Method::POST, "/v2/team/app/blobs/uploads/")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );

    // Basic credentials directly on a request are checked against the same list.
    raw.auth = None;
    let r = raw
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .basic_auth("bob", Some("pw"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = raw
        .req(Method::HEAD, &format!("/v2/team/app/blobs/{d}"))
        .basic_auth("bob", Some("wrong"))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    // Anonymous: public/* only.
    raw.auth = Some(bearer(token(
        &raw,
        None,
        &["repository:public/x:pull", "repository:team/app:pull"],
    )));
    assert_eq!(raw.get("/v2/public/x/tags/list").status().as_u16(), 404); // allowed, just empty
    assert_eq!(raw.get("/v2/team/app/tags/list").status().as_u16(), 401);

    // The catalog lists what the caller may pull: alice sees team/*, not the rest.
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &["registry:catalog:*"],
    )));
    let v: serde_json::Value = raw.get("/v2/_catalog").json().unwrap();
    assert_eq!(
        v["repositories"],
        serde_json::json!(["team/app", "team/other"])
    );
    // Without the catalog scope in the token, no catalog.
    raw.auth = Some(bearer(token(&raw, Some(("alice", "pw")), &[])));
    assert_eq!(raw.get("/v2/_catalog").status().as_u16(), 401);
}

#[test]
fn oauth2_password_grant_and_catalog_scope() {
    let reg = RegistryProcess::start_with_users(5, None, &[]);
    let mut raw = Raw::new(&reg);
    let r = raw
        .http
        .post(format!("{}/token", raw.base))
        .header("content-type", "application/x-www-form-urlencoded")
        .body("grant_type=password&username=alice&password=pw&service=archway-registry&scope=registry:catalog:*&client_id=test")
        .send()
        .unwrap();
    raw.auth = Some(bearer(r));
    let r = raw.get("/v2/_catalog");
    assert_eq!(r.status().as_u16(), 200);
    let r = raw
        .http
        .post(format!("{}/token", raw.base))
        .body("grant_type=password&username=alice&password=nope")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = raw
        .http
        .post(format!("{}/token", raw.base))
        .body("grant_type=refresh_token&refresh_token=x")
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[test]
fn anonymous_pull_option() {
    let reg = RegistryProcess::start_with_users(5, None, &["--anonymous-pull"]);
    let mut raw = Raw::new(&reg);
    raw.auth = Some(bearer(token(
        &raw,
        Some(("alice", "pw")),
        &["repository:lib/x:push,pull"],
    )));
    let d = raw.push_blob("lib/x", b"public layer");
    raw.auth = Some(bearer(token(&raw, None, &["repository:lib/x:pull,push"])));
    assert_eq!(
        raw.head(&format!("/v2/lib/x/blobs/{d}")).status().as_u16(),
        200
    );
    assert_eq!(
        raw.req(Method::POST, "/v2/lib/x/blobs/uploads/")
            .send()
            .unwrap()
            .status()
            .as_u16(),
        401
    );
}

#[test]
fn bad_auth_files_are_reported_with_their_line() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, "alice:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\n").unwrap();
    let out = crate::support::archway()
        .args(["registry", "serve", "--listen", "127.0.0.1:0", "--root"])
        .arg(dir.path().join("root"))
        .arg("--htpasswd")
        .arg(&users)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{}:1: not a bcrypt hash", users.display())),
        "{err}"
    );
    assert!(err.contains("htpasswd -B"), "{err}");
}
