//! The live status page at `/`: one self-contained HTML document, `index.html`, with its
//! CSS and JavaScript inline and no fonts, images, CDN or other hosts, so it works offline
//! and on a private network. The page is a constant: its script fetches `/api/v1/status`,
//! `/api/v1/alerts`, `/api/v1/freezes`, `/api/v1/episodes` and `/metrics` (queue depth,
//! last freeze) from the same origin every few seconds and draws the state and a 24 h
//! timeline in the browser, so the sidecar does no rendering and holds no page state.
//!
//! Owns the asset and the headers it is served with. Does not own the JSON it reads
//! (`http.rs`, `status.rs`, `alerts/outbox.rs`).
//!
//! The Content-Security-Policy allows the page's one `<script>` and one `<style>` by
//! their SHA-256 hashes, not by `'unsafe-inline'`: if an attacker ever got markup into
//! the page (a workflow name, an error text), an injected `<script>` or `on…=` handler
//! would not run. `require-trusted-types-for 'script'` makes the browser itself refuse
//! `innerHTML` with a string, so the script can only insert server text as text.
//! `default-src 'none'` with `connect-src 'self'` is stricter than `'self'`: the page
//! loads nothing at all besides its `fetch`es to this sidecar.

use std::sync::OnceLock;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page, as served.
pub const INDEX_HTML: &str = include_str!("index.html");

/// `Content-Type` of the page.
pub const CONTENT_TYPE: &str = "text/html; charset=utf-8";

/// The text of every `<tag>…</tag>` element in `html` (the page's own tags carry no
/// attributes, so the opening tag is exactly `<tag>`).
fn inline_blocks<'a>(html: &'a str, tag: &str) -> Vec<&'a str> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = html;
    while let Some(start) = rest.find(&open) {
        let body = &rest[start + open.len()..];
        let Some(end) = body.find(&close) else { break };
        out.push(&body[..end]);
        rest = &body[end + close.len()..];
    }
    out
}

/// `'sha256-…'` source expressions for the inline blocks of `tag`.
fn hashes(html: &str, tag: &str) -> String {
    inline_blocks(html, tag)
        .into_iter()
        .map(|block| format!("'sha256-{}'", STANDARD.encode(Sha256::digest(block))))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The policy for `html`: its inline script and style by hash, fetches to this origin,
/// nothing else.
pub fn policy_for(html: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'; trusted-types 'none'",
        hashes(html, "script"),
        hashes(html, "style")
    )
}

/// The `Content-Security-Policy` of [`INDEX_HTML`], computed once.
pub fn content_security_policy() -> &'static str {
    static POLICY: OnceLock<String> = OnceLock::new();
    POLICY.get_or_init(|| policy_for(INDEX_HTML))
}

/// Every header the page is served with.
pub fn headers() -> [(axum::http::HeaderName, &'static str); 5] {
    use axum::http::header;
    [
        (header::CONTENT_TYPE, CONTENT_TYPE),
        (header::CONTENT_SECURITY_POLICY, content_security_policy()),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        // The page is small and changes with the binary: never serve a stale copy.
        (header::CACHE_CONTROL, "no-cache"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Budget for the page: it is sent on every load, often to a phone.
    const MAX_PAGE_BYTES: usize = 40 * 1024;

    #[test]
    fn one_script_and_one_style_each_allowed_by_its_hash() {
        // Every opening tag is the bare form the hashing finds: none is missed.
        assert_eq!(INDEX_HTML.matches("<script").count(), 1);
        assert_eq!(INDEX_HTML.matches("<style").count(), 1);
        let scripts = inline_blocks(INDEX_HTML, "script");
        let styles = inline_blocks(INDEX_HTML, "style");
        assert_eq!((scripts.len(), styles.len()), (1, 1));
        let csp = content_security_policy();
        let script_hash = STANDARD.encode(Sha256::digest(scripts[0]));
        assert!(
            csp.contains(&format!("script-src 'sha256-{script_hash}';")),
            "{csp}"
        );
        assert!(!csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.starts_with("default-src 'none';"), "{csp}");
    }

    #[test]
    fn a_changed_script_gets_a_different_hash() {
        let a = policy_for("<script>1</script><style>a{}</style>");
        let b = policy_for("<script>2</script><style>a{}</style>");
        assert_ne!(a, b);
        // sha256("1"), base64: the hash is of the element's text exactly.
        assert!(
            a.contains("'sha256-a4ayc/80/OGda4BO/1o/V0etpOqiLx1JwB5S3beHW0s='"),
            "{a}"
        );
    }

    #[test]
    fn the_page_is_small_and_names_no_host() {
        assert!(
            INDEX_HTML.len() < MAX_PAGE_BYTES,
            "{} bytes",
            INDEX_HTML.len()
        );
        assert!(!INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"));
        assert!(!INDEX_HTML.contains("innerHTML") && !INDEX_HTML.contains("outerHTML"));
    }
}
