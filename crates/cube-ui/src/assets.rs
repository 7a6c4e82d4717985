//! The stylesheet and the script, compiled into the binary: the UI needs nothing from the
//! network, and no build step but Cargo's.

/// Where the stylesheet is served.
pub const CSS_PATH: &str = "/ui/assets/ui.css";
/// Where the script is served.
pub const JS_PATH: &str = "/ui/assets/ui.js";

/// The stylesheet.
pub const CSS: &str = include_str!("../assets/ui.css");
/// The script (plain JavaScript, no framework).
pub const JS: &str = include_str!("../assets/ui.js");

/// The asset at `path`, with its content type and an entity tag (a hash of its content, so a
/// browser revalidates with a 304 instead of fetching it again).
pub fn get(path: &str) -> Option<(&'static str, &'static str, String)> {
    let (body, kind) = match path {
        CSS_PATH => (CSS, "text/css; charset=utf-8"),
        JS_PATH => (JS, "text/javascript; charset=utf-8"),
        _ => return None,
    };
    Some((body, kind, format!("\"{:016x}\"", fnv1a(body.as_bytes()))))
}

/// FNV-1a: a fast hash, enough to tell one build's asset from another's.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_assets_name_no_other_site() {
        for body in [super::CSS, super::JS] {
            assert!(!body.contains("http://") && !body.contains("https://"));
            assert!(!body.contains("@import") && !body.contains("url("));
        }
    }

    #[test]
    fn unknown_assets_are_none_and_tags_follow_content() {
        assert!(super::get("/ui/assets/other.js").is_none());
        let (_, kind, tag) = super::get(super::CSS_PATH).unwrap();
        assert!(kind.starts_with("text/css"));
        assert_ne!(tag, super::get(super::JS_PATH).unwrap().2);
    }
}
