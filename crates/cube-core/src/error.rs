//! The core crate's error type, and [`Chain`], the one way Cube puts an error and its causes
//! into words.
//!
//! Cube's errors follow one rule: an error's `Display` says what failed, its `#[source]` says
//! why, and `Display` never repeats the source. Whoever shows an error to a person (a log line,
//! a task's reason, an API message) shows the whole chain with [`Chain`]; the CLI does the same
//! with anyhow's `{:#}`.

use std::fmt;

use crate::state::InvalidTransition;

/// Errors of the core crate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CoreError {
    /// An id string is not a UUID.
    #[error("invalid {kind} id {input:?}: expected a UUID")]
    InvalidId {
        /// Which kind of id was expected.
        kind: &'static str,
        /// The text given.
        input: String,
    },
    /// A quantity (size, CPU, duration) could not be parsed.
    #[error("invalid quantity {input:?}: expected {expected}")]
    InvalidQuantity {
        /// The text given.
        input: String,
        /// What a valid value looks like.
        expected: &'static str,
    },
    /// A name (a task state, a scheduler) is not one of the known ones.
    #[error("unknown {kind} {input:?}: expected one of {expected}")]
    UnknownName {
        /// What was named, e.g. `task state`.
        kind: &'static str,
        /// The text given.
        input: String,
        /// The known names, comma-separated.
        expected: String,
    },
    /// A placement constraint is malformed.
    #[error("{input:?}: {problem}")]
    InvalidConstraint {
        /// The text given.
        input: String,
        /// What is wrong with it.
        problem: crate::constraint::ConstraintProblem,
    },
    /// A state machine move that is not allowed.
    #[error(transparent)]
    InvalidTransition(#[from] InvalidTransition),
}

impl CoreError {
    /// The error for `input`, which names none of `T`'s variants (`kind` says what it should
    /// have named, e.g. `task state`).
    pub(crate) fn unknown_name<T: strum::VariantNames>(kind: &'static str, input: &str) -> Self {
        CoreError::UnknownName { kind, input: input.to_owned(), expected: T::VARIANTS.join(", ") }
    }
}

/// An error followed by its causes, joined with `": "`: `cannot run "x": No such file or
/// directory (os error 2)`. Causes whose text is already part of the line are left out.
#[derive(Clone, Copy)]
pub struct Chain<'a>(pub &'a (dyn std::error::Error + 'static));

impl<'a> Chain<'a> {
    /// The innermost cause, for a message where the whole chain would be noise (an HTTP
    /// client wraps "connection refused" in two layers of its own).
    pub fn root(self) -> &'a (dyn std::error::Error + 'static) {
        let mut cause = self.0;
        while let Some(next) = cause.source() {
            cause = next;
        }
        cause
    }
}

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut line = self.0.to_string();
        let mut source = self.0.source();
        while let Some(cause) = source {
            let text = cause.to_string();
            if !text.is_empty() && !line.contains(&text) {
                line.push_str(": ");
                line.push_str(&text);
            }
            source = cause.source();
        }
        f.write_str(&line)
    }
}

impl fmt::Debug for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot start")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn a_chain_names_every_cause_once() {
        let e = Outer(std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"));
        assert_eq!(Chain(&e).to_string(), "cannot start: no such file");
        assert_eq!(Chain(&e).root().to_string(), "no such file");
        let plain = CoreError::InvalidId { kind: "task", input: "x".into() };
        assert_eq!(Chain(&plain).to_string(), plain.to_string());
    }
}
