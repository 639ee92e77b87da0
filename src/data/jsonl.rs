//! Reading data files: JSONL (one JSON value a line) or one JSON array. Every record keeps the line
//! it came from, so later errors can name `file:line`.

use std::path::Path;

use serde_json::Value;

use crate::error::{DataError, RecordProblem};

/// One record and the 1-based line it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub line: usize,
    pub value: Value,
}

/// A bad record that `--skip-bad-records` skipped.
#[derive(Debug, Clone, PartialEq)]
pub struct Skipped {
    pub line: usize,
    pub problem: RecordProblem,
}

/// Records read from a file, and the bad ones that were skipped.
#[derive(Debug, Default)]
pub struct ReadRecords {
    pub records: Vec<Record>,
    pub skipped: Vec<Skipped>,
}

/// Reads `path` as JSONL or as a JSON array (a file whose first non-blank byte is `[`).
/// With `skip_bad`, malformed lines are skipped and counted; without it the first one is an error.
pub fn read_records(path: &Path, skip_bad: bool) -> Result<ReadRecords, DataError> {
    let bytes = std::fs::read(path).map_err(|cause| DataError::Io {
        path: path.into(),
        cause,
    })?;
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&bytes);
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'[') {
        return read_array(bytes).map_err(|(line, problem)| DataError::Record {
            path: path.into(),
            line,
            problem,
        });
    }
    let mut out = ReadRecords::default();
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let line = index + 1;
        match parse_line(raw) {
            Ok(None) => {}
            Ok(Some(value)) => out.records.push(Record { line, value }),
            Err(problem) if skip_bad => {
                tracing::warn!("{}:{line}: skipped: {problem}", path.display());
                out.skipped.push(Skipped { line, problem });
            }
            Err(problem) => {
                return Err(DataError::Record {
                    path: path.into(),
                    line,
                    problem,
                })
            }
        }
    }
    Ok(out)
}

/// One JSONL line: `None` for a blank line.
fn parse_line(raw: &[u8]) -> Result<Option<Value>, RecordProblem> {
    let text = utf8(raw)?;
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    serde_json::from_str(text)
        .map(Some)
        .map_err(|e| RecordProblem::Json(without_position(&e)))
}

fn utf8(raw: &[u8]) -> Result<&str, RecordProblem> {
    std::str::from_utf8(raw).map_err(|e| {
        // Column in characters of the valid prefix, 1-based, as an editor shows it.
        let valid = std::str::from_utf8(&raw[..e.valid_up_to()]).unwrap_or_default();
        RecordProblem::NotUtf8 {
            column: valid.chars().count() + 1,
        }
    })
}

/// A JSON array file: an array of records. A parse error carries serde_json's line.
fn read_array(bytes: &[u8]) -> Result<ReadRecords, (usize, RecordProblem)> {
    if let Err(e) = std::str::from_utf8(bytes) {
        let line = 1 + bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        let line_start = bytes[..e.valid_up_to()]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(0, |p| p + 1);
        return Err((
            line,
            utf8(&bytes[line_start..])
                .err()
                .unwrap_or(RecordProblem::NotUtf8 { column: 1 }),
        ));
    }
    // Parse once with positions: each element's line is found by a streaming pass over the array.
    let values: Vec<Value> = serde_json::from_slice(bytes)
        .map_err(|e| (e.line(), RecordProblem::Json(without_position(&e))))?;
    let lines = element_lines(bytes, values.len());
    let records = values
        .into_iter()
        .zip(lines)
        .map(|(value, line)| Record { line, value })
        .collect();
    Ok(ReadRecords {
        records,
        skipped: Vec::new(),
    })
}

/// The line on which each of the first `n` top-level array elements starts.
fn element_lines(bytes: &[u8], n: usize) -> Vec<usize> {
    let (mut depth, mut line, mut in_string, mut escaped) = (0usize, 1usize, false, false);
    let mut expecting = false;
    let mut lines = Vec::with_capacity(n);
    for &b in bytes {
        if b == b'\n' {
            line += 1;
        }
        if in_string {
            (escaped, in_string) = match (escaped, b) {
                (true, _) => (false, true),
                (false, b'\\') => (true, true),
                (false, b'"') => (false, false),
                _ => (false, true),
            };
            continue;
        }
        if expecting && !b.is_ascii_whitespace() && b != b']' {
            lines.push(line);
            expecting = false;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                expecting = depth == 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' if depth == 1 => expecting = true,
            _ => {}
        }
    }
    lines.resize(n, line);
    lines
}

/// serde_json's message without its " at line L column C" suffix (we print `file:line` ourselves).
fn without_position(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f
    }

    #[test]
    fn jsonl_records_keep_their_line_numbers_and_blank_lines_are_ignored() {
        let f = file(b"{\"a\": 1}\n\n{\"a\": 2}\n");
        let read = read_records(f.path(), false).unwrap();
        let lines: Vec<usize> = read.records.iter().map(|r| r.line).collect();
        assert_eq!(lines, [1, 3]);
    }

    #[test]
    fn a_malformed_line_is_an_error_naming_the_line_and_the_parser_message() {
        let f = file(b"{\"a\": 1}\n{\"a\": }\n");
        let err = read_records(f.path(), false).unwrap_err().to_string();
        assert!(
            err.contains(&format!(
                "{}:2: invalid JSON: expected value",
                f.path().display()
            )),
            "{err}"
        );
    }

    #[test]
    fn skipping_bad_records_counts_them() {
        let f = file(b"{\"a\": 1}\nnot json\n{\"a\": 2}\n\xff\n");
        let read = read_records(f.path(), true).unwrap();
        assert_eq!(read.records.len(), 2);
        let lines: Vec<usize> = read.skipped.iter().map(|s| s.line).collect();
        assert_eq!(lines, [2, 4]);
    }

    #[test]
    fn non_utf8_bytes_are_an_error_naming_the_line_and_column() {
        let f = file(b"{\"a\": \"ok\"}\n{\"a\": \"\xe4\xbd\xa0\xff\"}\n");
        let err = read_records(f.path(), false).unwrap_err().to_string();
        assert!(
            err.ends_with(":2: not valid UTF-8 (invalid byte at column 9)"),
            "{err}"
        );
    }

    #[test]
    fn a_json_array_file_gives_each_element_its_starting_line() {
        let f = file(b"[\n  {\"a\": \"x,[y]\"},\n  {\"a\": [1, 2]}\n]\n");
        let read = read_records(f.path(), false).unwrap();
        let lines: Vec<usize> = read.records.iter().map(|r| r.line).collect();
        assert_eq!(lines, [2, 3]);
    }

    #[test]
    fn a_malformed_json_array_names_the_line_of_the_error() {
        let f = file(b"[\n  {\"a\": 1},\n  {\"a\" 2}\n]\n");
        let err = read_records(f.path(), false).unwrap_err().to_string();
        assert!(err.contains(":3: invalid JSON: expected `:`"), "{err}");
    }
}
