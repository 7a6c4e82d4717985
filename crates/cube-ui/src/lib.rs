//! Cube's web UI: the pages the manager serves at `/ui`.
//!
//! Every page is rendered on the server from the API's own views (`TaskView`, `ServiceView`,
//! `NodeInfo`, events) by maud templates compiled into the binary; the stylesheet and the one
//! small script are embedded too ([`assets`]). Nothing here does I/O: the manager gathers the
//! views, this crate turns them into HTML, so every page is a pure function a unit test can
//! call.
//!
//! A page is its frame ([`page`]: the header, navigation, who is signed in) around its *live
//! part*, the `<div id="live">` that each page's function renders alone (`overview::live`,
//! `services::detail`, `tasks::list`, …). The manager sends that part again over the page's
//! event stream whenever a change altered it, and the script swaps it in; without JavaScript
//! the page is complete as served.

pub mod assets;
mod format;
pub mod nodes;
pub mod overview;
pub mod services;
pub mod tasks;

use maud::{DOCTYPE, Markup, PreEscaped, html};

pub use format::{bytes, cpu, percent};

/// Who is looking, and what the UI may offer them: buttons are shown only to roles that may
/// use them (the API checks again on every action).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Viewer {
    /// The token's name (`cluster` for the cluster token, `anonymous` on an open manager).
    pub name: String,
    /// The role it acts with, in words (`read`, `operate`, `exec`, `admin`).
    pub role: String,
    /// The form field every button sends back, tying it to this sign-in (CSRF).
    pub csrf: String,
    /// Promote, pause, resume, revert and scale services.
    pub may_deploy: bool,
    /// Drain nodes and change their eligibility.
    pub may_manage_nodes: bool,
    /// Signed in with a cookie (so a sign-out button makes sense).
    pub signed_in: bool,
}

/// The sections of the navigation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    /// `/ui`.
    Overview,
    /// `/ui/services`.
    Services,
    /// `/ui/tasks`.
    Tasks,
    /// `/ui/nodes`.
    Nodes,
}

/// The name of the form field carrying the CSRF token.
pub const CSRF_FIELD: &str = "csrf";

/// A whole page: `title`, the navigation with `section` current, and `live` (the part the
/// event stream refreshes) followed by `rest` (parts that stay, such as a log being followed).
/// A page for a viewer opens the live stream.
pub fn page(
    title: &str,
    section: Option<Section>,
    viewer: Option<&Viewer>,
    live: Markup,
    rest: Markup,
) -> Markup {
    frame(title, section, viewer, viewer.is_some(), live, rest)
}

fn frame(
    title: &str,
    section: Option<Section>,
    viewer: Option<&Viewer>,
    streams: bool,
    live: Markup,
    rest: Markup,
) -> Markup {
    let nav = [
        (Section::Overview, "/ui", "Overview"),
        (Section::Services, "/ui/services", "Services"),
        (Section::Tasks, "/ui/tasks", "Tasks"),
        (Section::Nodes, "/ui/nodes", "Nodes"),
    ];
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                title { (title) " · Cube" }
                link rel="stylesheet" href=(assets::CSS_PATH);
            }
            body data-live[streams] {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    a.brand href="/ui" { "Cube" }
                    @if let Some(viewer) = viewer {
                        nav aria-label="Main" {
                            ul {
                                @for (s, href, label) in nav {
                                    li { a href=(href) aria-current=[(section == Some(s)).then_some("page")] { (label) } }
                                }
                            }
                        }
                        div.who {
                            span #live-dot .live-dot title="Live updates" aria-hidden="true" {}
                            span { (viewer.name) " · " (viewer.role) }
                            @if viewer.signed_in {
                                form.inline method="post" action="/ui/sign-out" {
                                    (csrf(viewer))
                                    button type="submit" { "Sign out" }
                                }
                            }
                        }
                    }
                }
                main #main {
                    div #live { (live) }
                    (rest)
                }
                script src=(assets::JS_PATH) defer {}
            }
        }
    }
}

/// The hidden field that carries the CSRF token.
pub fn csrf(viewer: &Viewer) -> Markup {
    html! { input type="hidden" name=(CSRF_FIELD) value=(viewer.csrf); }
}

/// The sign-in page: a token field; `error` says why the last one was refused.
pub fn sign_in(error: Option<&str>, next: &str) -> Markup {
    let form = html! {
        section.panel.signin {
            h1 { "Sign in" }
            @if let Some(error) = error {
                p.error role="alert" { (error) }
            }
            form method="post" action="/ui/sign-in" {
                input type="hidden" name="next" value=(next);
                label for="token" { "Token" }
                input #token type="password" name="token" autocomplete="current-password" required autofocus;
                p.muted { "A user's token (" code { "cube token create" } ") or the cluster token." }
                button.primary type="submit" { "Sign in" }
            }
        }
    };
    page("Sign in", None, None, form, html! {})
}

/// A page saying what went wrong (an unknown task, a refused action), with a way back. It
/// opens no live stream: there is nothing of the cluster on it to keep current.
pub fn problem(viewer: Option<&Viewer>, title: &str, message: &str, back: &str) -> Markup {
    let body = html! {
        h1 { (title) }
        p.error role="alert" { (message) }
        p { a href=(back) { "Back" } }
    };
    frame(title, None, viewer, false, body, html! {})
}

/// A live part that cannot be shown any more (the task was removed, the node forgotten).
pub fn problem_part(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

/// A moment, as a `<time>`: the clock time in UTC (the date too when it is not today's), which
/// stays the same from one render to the next so a live page changes only when the cluster
/// does; the script shows it as an age ("3s ago") and keeps that current in the browser.
pub fn when(t: jiff::Timestamp, now: jiff::Timestamp) -> Markup {
    let text = if t.strftime("%F").to_string() == now.strftime("%F").to_string() {
        t.strftime("%T UTC").to_string()
    } else {
        t.strftime("%F %R UTC").to_string()
    };
    let exact = t.to_string();
    html! { time datetime=(exact) title=(exact) data-ago { (text) } }
}

/// A state as a coloured word (`s-running` etc. in the stylesheet).
pub(crate) fn state(word: &str) -> Markup {
    html! { span class={ "state s-" (word) } { (word) } }
}

/// A bar of `part` out of `whole` with a label (`<meter>`: no inline style, which the
/// pages' content security policy forbids).
pub(crate) fn bar(label: &str, part: f64, whole: f64, text: &str) -> Markup {
    let whole = if whole > 0.0 { whole } else { 1.0 };
    let part = part.clamp(0.0, whole);
    html! {
        div.meter {
            meter aria-label=(label) min="0" max=(whole) value=(part) { (text) }
            span.bar-label { (text) }
        }
    }
}

/// Text for an SSE `data:` field: one `data:` line per line of `html`.
pub fn sse_data(html: &str) -> String {
    let mut out = String::with_capacity(html.len() + 16);
    for line in html.split('\n') {
        out.push_str("data: ");
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Links to the previous and next page of a list of `total` items shown `per_page` at a
/// time, `page` (from 1) being this one; `href` makes a page's URL.
pub(crate) fn pager(
    page: usize,
    per_page: usize,
    total: usize,
    href: impl Fn(usize) -> String,
) -> Markup {
    let pages = total.div_ceil(per_page.max(1)).max(1);
    html! {
        nav.pager aria-label="Pages" {
            @if page > 1 { a rel="prev" href=(href(page - 1)) { "← Previous" } }
            span.muted { "Page " (page) " of " (pages) " · " (total) " in all" }
            @if page < pages { a rel="next" href=(href(page + 1)) { "Next →" } }
        }
    }
}

/// Inline JSON, pretty.
pub(crate) fn json(value: &serde_json::Value) -> Markup {
    let text = serde_json::to_string(value).unwrap_or_default();
    html! { code { (text) } }
}

/// Nothing: a page with no static part.
pub fn nothing() -> Markup {
    PreEscaped(String::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer() -> Viewer {
        Viewer {
            name: "alice".into(),
            role: "operate".into(),
            csrf: "c5rf".into(),
            may_deploy: true,
            may_manage_nodes: false,
            signed_in: true,
        }
    }

    #[test]
    fn a_page_names_its_section_and_carries_the_csrf_token_in_its_forms() {
        let html = page("Tasks", Some(Section::Tasks), Some(&viewer()), html! { "x" }, nothing())
            .into_string();
        assert!(html.contains(r#"<a href="/ui/tasks" aria-current="page">Tasks</a>"#), "{html}");
        assert!(html.contains(r#"name="csrf" value="c5rf""#), "{html}");
        assert!(html.contains("data-live"), "{html}");
        assert!(html.contains(r#"<div id="live">x</div>"#), "{html}");
    }

    #[test]
    fn the_sign_in_page_has_no_navigation_and_no_live_stream() {
        let html = sign_in(Some("wrong token"), "/ui/tasks").into_string();
        assert!(!html.contains("data-live"), "{html}");
        assert!(html.contains("wrong token"));
        assert!(html.contains(r#"name="next" value="/ui/tasks""#));
    }

    #[test]
    fn a_problem_page_opens_no_stream() {
        let html = problem(Some(&viewer()), "Not Found", "no task", "/ui").into_string();
        assert!(!html.contains("data-live"), "{html}");
        assert!(html.contains("Sign out"), "the navigation stays: {html}");
    }

    #[test]
    fn text_is_escaped() {
        let html = problem(None, "<b>", "<script>alert(1)</script>", "/ui").into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;"));
    }

    #[test]
    fn times_stay_the_same_from_render_to_render() {
        let at: jiff::Timestamp = "2026-12-04T11:59:56.5Z".parse().unwrap();
        let today = when(at, "2026-12-04T12:00:00Z".parse().unwrap()).into_string();
        assert_eq!(
            today,
            r#"<time datetime="2026-12-04T11:59:56.5Z" title="2026-12-04T11:59:56.5Z" data-ago>11:59:56 UTC</time>"#
        );
        assert_eq!(today, when(at, "2026-12-04T12:00:09Z".parse().unwrap()).into_string());
        let later = when(at, "2026-12-06T08:00:00Z".parse().unwrap()).into_string();
        assert!(later.contains(">2026-12-04 11:59 UTC</time>"), "{later}");
    }

    #[test]
    fn sse_data_keeps_every_line() {
        assert_eq!(sse_data("a\nb"), "data: a\ndata: b\n");
    }

    #[test]
    fn pages_link_to_no_other_site() {
        let html = page("x", None, Some(&viewer()), nothing(), nothing()).into_string();
        assert!(!html.contains("http://") && !html.contains("https://"), "{html}");
    }
}
