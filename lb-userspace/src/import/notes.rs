//! The notes of an import: each directive that was not translated, and why.

use super::nginx::Directive;

/// A directive that was not translated.
#[derive(Debug, Clone, PartialEq)]
pub struct Note {
    pub line: usize,
    /// The directive as written (name and arguments).
    pub directive: String,
    pub why: String,
}

/// What was not translated.
#[derive(Debug, Default)]
pub struct Notes(pub(super) Vec<Note>);

impl Notes {
    pub(super) fn add(&mut self, d: &Directive, why: &str) {
        self.at(d.line, &d.text(), why);
    }

    /// Adds a note, once: an upstream that several locations use is read for each.
    pub(super) fn at(&mut self, line: usize, directive: &str, why: &str) {
        let note = Note { line, directive: directive.to_owned(), why: why.to_owned() };
        if !self.0.contains(&note) {
            self.0.push(note);
        }
    }
}
