//! Task and service files: a spec written as TOML (or JSON), read with errors that point at the
//! line, column and field of the first mistake, then validated with every problem listed.

use std::path::Path;

use cube_core::service::ServiceSpec;
use cube_core::{FieldError, TaskSpec};
use serde::de::DeserializeOwned;

/// Which syntax a task file is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Syntax {
    /// TOML (the default).
    Toml,
    /// JSON (files ending in `.json`).
    Json,
}

impl Syntax {
    /// JSON for `.json` files, TOML for anything else.
    pub(super) fn of_path(path: &Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some(ext) if ext.eq_ignore_ascii_case("json") => Syntax::Json,
            _ => Syntax::Toml,
        }
    }

    /// For standard input: JSON when the text starts with `{`.
    pub(super) fn sniff(text: &str) -> Self {
        if text.trim_start().starts_with('{') { Syntax::Json } else { Syntax::Toml }
    }
}

/// Reads, parses and validates the task file at `path` (`-` = standard input).
pub(super) fn load(path: &Path) -> anyhow::Result<TaskSpec> {
    load_as(path, "task", |spec: &TaskSpec| check(spec))
}

/// Reads, parses and validates the service file at `path` (`-` = standard input).
pub(super) fn load_service(path: &Path) -> anyhow::Result<ServiceSpec> {
    load_as(path, "service", |spec: &ServiceSpec| {
        spec.validate().map_err(|errors| problems("service", &errors))
    })
}

fn load_as<T: DeserializeOwned>(
    path: &Path,
    what: &str,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> anyhow::Result<T> {
    let (name, text, syntax) = if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
            .map_err(|e| anyhow::anyhow!("cannot read the {what} from standard input: {e}"))?;
        let syntax = Syntax::sniff(&text);
        ("<stdin>".to_owned(), text, syntax)
    } else {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            let why = match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_owned(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
                std::io::ErrorKind::InvalidData => "not UTF-8 text".to_owned(),
                std::io::ErrorKind::IsADirectory => "is a directory".to_owned(),
                _ => e.to_string(),
            };
            anyhow::anyhow!("cannot read {what} file {name}: {why}")
        })?;
        (name, text, Syntax::of_path(path))
    };
    let spec = parse_as::<T>(&text, syntax).map_err(|e| anyhow::anyhow!("{name}:{e}"))?;
    validate(&spec).map_err(|problems| anyhow::anyhow!("{name}: {problems}"))?;
    Ok(spec)
}

/// Runs [`TaskSpec::validate`] and joins every problem into one line.
pub(super) fn check(spec: &TaskSpec) -> Result<(), String> {
    spec.validate().map_err(|errors| problems("task", &errors))
}

fn problems(what: &str, errors: &[FieldError]) -> String {
    let list: Vec<String> = errors.iter().map(ToString::to_string).collect();
    format!("invalid {what} spec: {}", list.join("; "))
}

/// Where a parse error is and what it says.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct ParseError {
    /// 1-based line.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// Dotted path of the field (empty for syntax errors and missing top-level fields).
    pub field: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for ParseError {
    /// `3:1: unknown field ...` or `5:10: resources.memory: must not be negative (got -5)`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Parses a spec of any kind, without validating it.
pub(super) fn parse_as<T: DeserializeOwned>(text: &str, syntax: Syntax) -> Result<T, ParseError> {
    match syntax {
        Syntax::Toml => parse_toml(text),
        Syntax::Json => parse_json(text),
    }
}

fn parse_toml<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let deserializer = toml::Deserializer::parse(text).map_err(|e| {
        let (line, column) = position(text, e.span().map_or(0, |s| s.start));
        ParseError { line, column, field: String::new(), message: one_line(e.message()) }
    })?;
    serde_path_to_error::deserialize::<_, T>(deserializer).map_err(|e| {
        let field = field_of(e.path());
        let inner = e.into_inner();
        let (line, column) = position(text, inner.span().map_or(0, |s| s.start));
        let message = one_line(inner.message());
        ParseError { line, column, field: holder_of_unknown(field, &message), message }
    })
}

fn parse_json<T: DeserializeOwned>(text: &str) -> Result<T, ParseError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let spec = serde_path_to_error::deserialize::<_, T>(&mut deserializer).map_err(|e| {
        let field = field_of(e.path());
        json_error(&e.into_inner(), field)
    })?;
    deserializer.end().map_err(|e| json_error(&e, String::new()))?;
    Ok(spec)
}

/// A serde_json error without its " at line L column C" suffix (the position is kept apart).
fn json_error(e: &serde_json::Error, field: String) -> ParseError {
    let full = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    let message = one_line(full.strip_suffix(&suffix).unwrap_or(&full));
    let field = holder_of_unknown(field, &message);
    ParseError { line: e.line().max(1), column: e.column().max(1), field, message }
}

/// For an unknown field, the path of the table that holds it: the message already names the
/// field itself ("unknown field `imgae`"), so `resources.memroy` becomes `resources`.
fn holder_of_unknown(field: String, message: &str) -> String {
    let Some(rest) = message.strip_prefix("unknown field `") else { return field };
    let Some((name, _)) = rest.split_once('`') else { return field };
    match field.strip_suffix(name) {
        Some(holder) => holder.strip_suffix('.').unwrap_or(holder).to_owned(),
        None => field,
    }
}

/// The dotted path of the field an error is about; the root is the empty string.
fn field_of(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let mut out = String::new();
    for segment in &segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Unknown => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push('?');
            }
        }
    }
    out
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

fn one_line(text: &str) -> String {
    text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {

    use super::*;

    fn parse(text: &str, syntax: Syntax) -> Result<TaskSpec, ParseError> {
        parse_as(text, syntax)
    }

    #[test]
    fn a_good_toml_file_parses() {
        let spec = parse(
            "name = \"web\"\ndriver = \"docker\"\nimage = \"i\"\n\n[resources]\nmemory = \"64MiB\"\n\
             cpu = 0.5\n\n[[ports]]\ncontainer = 80\n\n[restart]\nmode = \"on-failure\"\n",
            Syntax::Toml,
        )
        .unwrap();
        assert_eq!(spec.resources.memory, cube_core::Bytes::mib(64));
        assert_eq!(spec.ports[0].container, 80);
        assert_eq!(check(&spec), Ok(()));
    }

    #[test]
    fn unknown_fields_point_at_their_line() {
        let e = parse("name = \"web\"\ndriver = \"docker\"\nimgae = \"x\"\n", Syntax::Toml)
            .unwrap_err();
        assert_eq!((e.line, e.column), (3, 1));
        assert_eq!(e.field, "");
        assert!(e.message.starts_with("unknown field `imgae`, expected one of"), "{e}");
        assert!(e.to_string().starts_with("3:1: unknown field `imgae`"), "{e}");
    }

    #[test]
    fn nested_errors_name_the_field() {
        let text = "name = \"web\"\ndriver = \"docker\"\nimage = \"x\"\n[resources]\nmemory = -5\n";
        let e = parse(text, Syntax::Toml).unwrap_err();
        assert_eq!(e.to_string(), "5:10: resources.memory: must not be negative (got -5)");
        let text = "name = \"w\"\ndriver = \"docker\"\nimage = \"x\"\n[resources]\nmemroy = 5\n";
        let e = parse(text, Syntax::Toml).unwrap_err();
        assert_eq!(e.field, "resources");
        assert!(e.message.starts_with("unknown field `memroy`"), "{e}");
        let text = "name = \"w\"\ndriver = \"docker\"\nimage = \"x\"\nports = [{container = 80}, {container = \"a\"}]\n";
        let e = parse(text, Syntax::Toml).unwrap_err();
        assert_eq!(e.field, "ports[1].container");
        assert_eq!((e.line, e.column), (4, 41));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let e = parse("name = \"web\"\ndriver = docker\n", Syntax::Toml).unwrap_err();
        assert_eq!(e.line, 2);
        assert!(!e.message.contains('\n'));
    }

    #[test]
    fn json_files_report_positions_too() {
        let e = parse(
            "{\"name\": \"x\",\n \"driver\": \"process\",\n \"comand\": \"sh\"}",
            Syntax::Json,
        )
        .unwrap_err();
        assert_eq!(e.line, 3);
        assert!(e.message.starts_with("unknown field `comand`"), "{e}");
        assert!(!e.message.contains("at line"), "{e}");
        let spec =
            parse("{\"name\": \"x\", \"driver\": \"process\", \"command\": \"sh\"}", Syntax::Json)
                .unwrap();
        assert_eq!(spec.command.as_deref(), Some("sh"));
    }

    #[test]
    fn validation_lists_every_problem() {
        let spec = parse("name = \"\"\ndriver = \"docker\"\n", Syntax::Toml).unwrap();
        let problems = check(&spec).unwrap_err();
        assert_eq!(
            problems,
            "invalid task spec: name: must not be empty; image: is required by the docker driver"
        );
    }

    #[test]
    fn service_files_parse_with_the_template_nested() {
        let text = "name = \"web\"\ncount = 3\n\n[task]\nname = \"web\"\ndriver = \"process\"\n\
                    command = \"x\"\n\n[update]\nmax_surge = \"50%\"\ncanary = 1\n";
        let spec: ServiceSpec = parse_as(text, Syntax::Toml).unwrap();
        assert_eq!((spec.count, spec.update.canary), (3, 1));
        assert_eq!(spec.update.max_surge, cube_core::service::Amount::Percent(50));
        let e = parse_as::<ServiceSpec>(
            "name = \"web\"\ncount = 3\n[task]\nname = \"w\"\ndriver = \"process\"\n\
             command = \"x\"\n[update]\nmax_surge = \"lots\"\n",
            Syntax::Toml,
        )
        .unwrap_err();
        assert_eq!((e.line, e.field.as_str()), (8, "update.max_surge"));
    }

    #[test]
    fn positions_count_characters() {
        assert_eq!(position("ab\ncd", 0), (1, 1));
        assert_eq!(position("ab\ncd", 4), (2, 2));
        assert_eq!(position("é\nx", 3), (2, 1));
    }

    #[test]
    fn syntax_follows_the_extension() {
        assert_eq!(Syntax::of_path(Path::new("a.json")), Syntax::Json);
        assert_eq!(Syntax::of_path(Path::new("a.toml")), Syntax::Toml);
        assert_eq!(Syntax::of_path(Path::new("job")), Syntax::Toml);
        assert_eq!(Syntax::sniff("  {\"a\": 1}"), Syntax::Json);
    }
}
