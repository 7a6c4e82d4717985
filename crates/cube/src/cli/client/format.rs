//! Output helpers shared by the client commands: writing to stdout, tables, colour, and the
//! human forms of times, sizes and CPU.

use std::io::{IsTerminal, Write};

use comfy_table::{Cell, Color, Table};
use cube_core::{Millicores, TaskState};
use jiff::Timestamp;

/// Writes `text` and a newline to stdout. A closed pipe (`cube status | head`) is not an error.
pub(super) fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(anyhow::anyhow!("cannot write to standard output: {e}"))
        }
        _ => Ok(()),
    }
}

/// Writes `value` as pretty JSON to stdout.
pub(super) fn emit_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| anyhow::anyhow!("cannot encode JSON output: {e}"))?;
    emit(&text)
}

/// A note for people on stderr (kept off stdout so pipes see only data).
#[allow(clippy::print_stderr)]
pub(super) fn note(text: &str) {
    eprintln!("{text}");
}

/// An `error: ...` line on stderr, for failures reported with an exit code other than 1.
#[allow(clippy::print_stderr)]
pub(super) fn error_line(text: &str) {
    eprintln!("error: {text}");
}

/// Whether stdout gets colour: a terminal, and `NO_COLOR` unset (<https://no-color.org>).
pub(super) fn colour_stdout() -> bool {
    std::io::stdout().is_terminal() && no_color_unset()
}

fn no_color_unset() -> bool {
    std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// A borderless table in the style of `docker ps` / `kubectl get`.
pub(super) fn table(headers: &[&str], colour: bool) -> Table {
    let mut table = Table::new();
    table.load_style(comfy_table::presets::NOTHING);
    table.set_header(headers.iter().copied().map(Cell::new));
    for column in table.column_iter_mut() {
        column.set_padding((0, 3));
    }
    if colour {
        table.enforce_styling();
        table.style_text_only();
    } else {
        table.force_no_tty();
    }
    table
}

/// The table's text, without trailing spaces or blank lines.
pub(super) fn render(table: &Table) -> String {
    table
        .lines()
        .map(|l| l.trim_end().to_owned())
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("\n")
}

/// A task state, coloured when `colour`: running green, failed red, waiting yellow.
pub(super) fn state_cell(state: TaskState, colour: bool) -> Cell {
    let cell = Cell::new(<&str>::from(state));
    match state_colour(state) {
        Some(c) if colour => cell.fg(c),
        _ => cell,
    }
}

fn state_colour(state: TaskState) -> Option<Color> {
    match state {
        TaskState::Running => Some(Color::Green),
        TaskState::Failed => Some(Color::Red),
        TaskState::Pending | TaskState::Scheduled | TaskState::Restarting => Some(Color::Yellow),
        TaskState::Completed => None,
    }
}

/// A state in running text, coloured like [`state_cell`].
pub(super) fn state_text(state: TaskState, colour: bool) -> String {
    let code = match state_colour(state) {
        Some(Color::Green) => "32",
        Some(Color::Red) => "31",
        Some(_) => "33",
        None => return state.to_string(),
    };
    if colour { format!("\x1b[{code}m{state}\x1b[0m") } else { state.to_string() }
}

/// `3s ago`, `5m ago`, `2h ago`, `3d ago` (`in 4s` for a time ahead of this machine's clock).
pub(super) fn ago(at: Timestamp, now: Timestamp) -> String {
    let seconds = now.as_second() - at.as_second();
    if seconds == 0 {
        return "just now".to_owned();
    }
    let amount = short_duration(seconds.unsigned_abs());
    if seconds > 0 { format!("{amount} ago") } else { format!("in {amount}") }
}

/// `42s`, `5m`, `2h`, `3d`: the largest whole unit.
fn short_duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m", s / 60),
        s if s < 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// `2024-05-01T10:00:00Z (3s ago)`.
pub(super) fn when(at: Timestamp, now: Timestamp) -> String {
    format!("{at:.0} ({})", ago(at, now))
}

/// `-` for a missing value.
pub(super) fn or_dash(value: Option<String>) -> String {
    value.filter(|v| !v.is_empty()).unwrap_or_else(|| "-".to_owned())
}

/// Bytes for people (see [`cube_core::Bytes::human`]).
pub(super) fn human_bytes(bytes: u64) -> String {
    cube_core::Bytes(bytes).human()
}

/// CPU as cores with at most two decimals: `0.5`, `2`, `0.25`.
pub(super) fn cores(cpu: Millicores) -> String {
    trim_number(&format!("{:.2}", cpu.as_cores()))
}

/// A fraction in [0, 1] as a whole percentage.
pub(super) fn percent(fraction: f64) -> String {
    format!("{:.0}%", fraction * 100.0)
}

/// `1.50` → `1.5`, `2.0` → `2`.
fn trim_number(text: &str) -> String {
    if text.contains('.') {
        text.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        text.to_owned()
    }
}

/// `text` on one line and at most `max` characters, ending in `…` when cut.
pub(super) fn truncate(text: &str, max: usize) -> String {
    let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max {
        return flat;
    }
    let mut cut: String = flat.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// A command line for display: arguments with spaces or quotes are single-quoted.
pub(super) fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// `Key:   value` lines with the values aligned, in the style of `kubectl describe`.
#[derive(Default)]
pub(super) struct Details {
    rows: Vec<(String, String)>,
}

impl Details {
    /// Adds a row.
    pub(super) fn row(&mut self, key: &str, value: impl Into<String>) -> &mut Self {
        self.rows.push((key.to_owned(), value.into()));
        self
    }

    /// The aligned text.
    pub(super) fn render(&self) -> String {
        // The longest key, its colon and two spaces.
        let width = self.rows.iter().map(|(k, _)| k.chars().count()).max().unwrap_or(0) + 3;
        self.rows
            .iter()
            .map(|(k, v)| format!("{:<width$}{v}", format!("{k}:")).trim_end().to_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Indents every line of `text` by two spaces.
pub(super) fn indent(text: &str) -> String {
    text.lines()
        .map(|l| if l.is_empty() { String::new() } else { format!("  {l}") })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {

    use super::*;

    #[test]
    fn relative_times() {
        let now: Timestamp = "2024-05-01T12:00:00Z".parse().unwrap();
        let at = |s: &str| -> Timestamp { s.parse().unwrap() };
        assert_eq!(ago(at("2024-05-01T12:00:00Z"), now), "just now");
        assert_eq!(ago(at("2024-05-01T11:59:57Z"), now), "3s ago");
        assert_eq!(ago(at("2024-05-01T11:55:00Z"), now), "5m ago");
        assert_eq!(ago(at("2024-05-01T10:00:00Z"), now), "2h ago");
        assert_eq!(ago(at("2024-04-28T12:00:00Z"), now), "3d ago");
        assert_eq!(ago(at("2024-05-01T12:00:04Z"), now), "in 4s");
        assert_eq!(when(at("2024-05-01T11:59:57.123Z"), now), "2024-05-01T11:59:57Z (3s ago)");
    }

    #[test]
    fn sizes_and_cpu() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(64 << 20), "64MiB");
        assert_eq!(human_bytes(3 << 29), "1.5GiB");
        assert_eq!(cores(Millicores(500)), "0.5");
        assert_eq!(cores(Millicores(2000)), "2");
        assert_eq!(cores(Millicores(250)), "0.25");
        assert_eq!(percent(0.123), "12%");
    }

    #[test]
    fn truncation_and_quoting() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a longer\nreason", 8), "a longe…");
        let argv = ["sh".to_owned(), "-c".to_owned(), "echo 'hi'; exit 1".to_owned()];
        assert_eq!(shell_words(&argv), r"sh -c 'echo '\''hi'\''; exit 1'");
    }

    #[test]
    fn tables_have_no_borders_and_no_colour_when_off() {
        let mut t = table(&["ID", "STATE"], false);
        t.add_row(vec![Cell::new("abc"), state_cell(TaskState::Running, false)]);
        assert_eq!(render(&t), "ID    STATE\nabc   running");
        let details = Details::default().row("ID", "x").row("Name", "web").render();
        assert_eq!(details, "ID:    x\nName:  web");
    }
}
