//! Registry diagnostics: one problem (or warning) found while loading, with where it was found.

use std::fmt;
use std::path::PathBuf;

/// A load problem. `Display` renders one line:
/// `registry/_index.yaml:12: entry app:db: field `file`: missing required field`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub entry: Option<String>,
    pub field: Option<String>,
    pub message: String,
}

impl Diagnostic {
    pub fn new(file: impl Into<PathBuf>, message: impl Into<String>) -> Self {
        Diagnostic {
            file: file.into(),
            line: None,
            entry: None,
            field: None,
            message: message.into(),
        }
    }

    pub fn at_line(mut self, line: Option<usize>) -> Self {
        self.line = line;
        self
    }

    pub fn in_entry(mut self, entry: impl Into<String>) -> Self {
        self.entry = Some(entry.into());
        self
    }

    pub fn in_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if let Some(entry) = &self.entry {
            write!(f, ": entry {entry}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for Diagnostic {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_every_part() {
        let d = Diagnostic::new("registry/_index.yaml", "missing required field")
            .at_line(Some(12))
            .in_entry("app:db")
            .in_field("file");
        assert_eq!(
            d.to_string(),
            "registry/_index.yaml:12: entry app:db: field `file`: missing required field"
        );
    }

    #[test]
    fn display_omits_absent_parts() {
        let d = Diagnostic::new("registry/x.yaml", "invalid YAML");
        assert_eq!(d.to_string(), "registry/x.yaml: invalid YAML");
        let d = Diagnostic::new("r/x.yaml", "m").in_entry("app:a");
        assert_eq!(d.to_string(), "r/x.yaml: entry app:a: m");
    }
}
