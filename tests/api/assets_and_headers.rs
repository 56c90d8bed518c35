use crate::helpers::{client, spawn_app};

fn assert_security_headers(res: &reqwest::Response, what: &str) {
    let h = res.headers();
    let csp = h
        .get("content-security-policy")
        .unwrap_or_else(|| panic!("{what}: no CSP"))
        .to_str()
        .unwrap();
    assert!(csp.contains("script-src 'self'"), "{what}: {csp}");
    assert!(csp.contains("frame-ancestors 'none'"), "{what}: {csp}");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["referrer-policy"], "same-origin", "{what}");
    assert!(h.contains_key("x-request-id"), "{what}: request id");
}

#[tokio::test]
async fn security_headers_on_every_kind_of_response() {
    let app = spawn_app().await;
    let c = client();
    let admin = app.admin().await;

    for (who, path) in [
        (&c, "/login"),
        (&c, "/"),
        (&c, "/healthz"),
        (&admin, "/"),
        (&admin, "/missing"),
        (&c, &kiln::web::assets::url("app.css")),
    ] {
        let res = app.get(who, path).await;
        assert_security_headers(&res, path);
    }
    let api = c.get(app.url("/api/v1/audit")).send().await.unwrap();
    assert_security_headers(&api, "/api/v1/audit (401)");
}

#[tokio::test]
async fn assets_have_a_content_hash_etag_long_cache_and_304() {
    let app = spawn_app().await;
    let c = client();
    let url = kiln::web::assets::url("vendor/htmx.min.js");
    assert!(url.contains("?v="), "{url}");

    let res = app.get(&c, &url).await;

    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "text/javascript");
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        url.ends_with(etag.trim_matches('"')),
        "the ETag is the content hash of the URL: {etag} {url}"
    );
    assert!(
        res.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("max-age=31536000")
    );
    assert!(res.bytes().await.unwrap().len() > 10_000, "the real htmx");

    let again = c
        .get(app.url(&url))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    assert!(again.bytes().await.unwrap().is_empty());

    let unknown = app.get(&c, "/static/nope.js").await;
    assert_eq!(unknown.status(), 404);
}

#[tokio::test]
async fn pages_link_only_assets_that_exist() {
    let app = spawn_app().await;
    let admin = app.admin().await;
    let html = app.get(&admin, "/").await.text().await.unwrap();
    let doc = scraper::Html::parse_document(&html);
    let sel = scraper::Selector::parse("script[src], link[href]").unwrap();
    let links: Vec<String> = doc
        .select(&sel)
        .filter_map(|e| {
            e.value()
                .attr("src")
                .or(e.value().attr("href"))
                .map(str::to_owned)
        })
        .collect();
    assert!(links.len() >= 4, "{links:?}");
    for link in links {
        let res = app.get(&admin, &link).await;
        assert_eq!(res.status(), 200, "{link}");
    }
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "no inline script or style"
    );
}
