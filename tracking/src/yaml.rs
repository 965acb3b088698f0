//! The flat `key: scalar` YAML that MLflow's `meta.yaml` files use, by hand: a
//! full YAML dependency for ~14 scalar lines is not worth it. The writer only
//! emits forms PyYAML's `safe_load` reads back as the same string; the reader
//! accepts what PyYAML's `safe_dump` produces for flat string/int/null maps,
//! including the line folding it applies to scalars longer than 80 columns.

use std::fmt::Write as _;

/// One top-level entry. `raw` keeps the original text (all its lines) so that
/// rewriting a file MLflow wrote preserves fields we do not model.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub key: String,
    pub value: Value,
    raw: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    /// An unquoted scalar kept verbatim: ints, `[]`, plain strings.
    Plain(String),
    /// A string that must be quoted when written (or was quoted when read).
    Str(String),
}

impl Value {
    /// The scalar as text, whether it was quoted or not; `None` for null.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Null => None,
            Value::Plain(s) | Value::Str(s) => Some(s),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Doc {
    entries: Vec<Entry>,
}

impl Doc {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.entries.iter().find(|e| e.key == key).map(|e| &e.value)
    }

    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(Value::as_str)
    }

    /// Replaces (dropping the preserved raw text) or appends.
    pub fn set(&mut self, key: &str, value: Value) {
        match self.entries.iter_mut().find(|e| e.key == key) {
            Some(e) => {
                e.value = value;
                e.raw = None;
            }
            None => self.entries.push(Entry { key: key.to_string(), value, raw: None }),
        }
    }

    pub fn set_str(&mut self, key: &str, s: &str) {
        self.set(key, Value::Str(s.to_string()));
    }

    pub fn set_int(&mut self, key: &str, v: i64) {
        self.set(key, Value::Plain(v.to_string()));
    }

    /// Keys sorted, as PyYAML's `sort_keys=True` writes them.
    pub fn to_yaml(&self) -> String {
        let mut entries: Vec<&Entry> = self.entries.iter().collect();
        entries.sort_by(|a, b| a.key.cmp(&b.key));
        let mut out = String::new();
        for e in entries {
            if let Some(raw) = &e.raw {
                out.push_str(raw);
                out.push('\n');
                continue;
            }
            let v = match &e.value {
                Value::Null => "null".to_string(),
                Value::Plain(s) => s.clone(),
                Value::Str(s) => quote(s),
            };
            let _ = writeln!(out, "{}: {}", quote_key(&e.key), v);
        }
        out
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut doc = Doc::new();
        // (key, first-line value, continuation lines, raw lines)
        let mut cur: Option<(String, String, Vec<String>, String)> = None;
        let finish = |doc: &mut Doc, cur: Option<(String, String, Vec<String>, String)>| -> Result<(), String> {
            if let Some((key, first, cont, raw)) = cur {
                let value = decode_value(&first, &cont).map_err(|e| format!("key {key:?}: {e}"))?;
                doc.entries.push(Entry { key, value, raw: Some(raw) });
            }
            Ok(())
        };
        for (n, line) in text.lines().enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.starts_with(' ') || line.starts_with('\t') || line.starts_with("- ") || line == "-" {
                match cur.as_mut() {
                    Some((_, _, cont, raw)) => {
                        cont.push(line.to_string());
                        raw.push('\n');
                        raw.push_str(line);
                        continue;
                    }
                    None if line.trim().is_empty() => continue,
                    None => return Err(format!("line {}: continuation without a key", n + 1)),
                }
            }
            if line.trim().is_empty() {
                if let Some((_, _, cont, raw)) = cur.as_mut() {
                    // An empty line inside a folded scalar means a newline.
                    cont.push(String::new());
                    raw.push('\n');
                }
                continue;
            }
            if line.starts_with('#') || line == "---" || line == "..." {
                continue;
            }
            finish(&mut doc, cur.take())?;
            let (key, rest) = split_key(line).ok_or_else(|| format!("line {}: expected `key: value`", n + 1))?;
            cur = Some((key, rest.to_string(), Vec::new(), line.to_string()));
        }
        finish(&mut doc, cur)?;
        // Trailing empty lines are not part of the last value.
        for e in &mut doc.entries {
            if let Some(raw) = &mut e.raw {
                while raw.ends_with('\n') {
                    raw.pop();
                }
            }
        }
        Ok(doc)
    }
}

fn split_key(line: &str) -> Option<(String, &str)> {
    if line.starts_with('\'') || line.starts_with('"') {
        // Quoted key: find the closing quote, then `:`.
        let q = line.chars().next()?;
        let end = line[1..].find(q)? + 1;
        let key = decode_value(&line[..=end], &[]).ok()?.as_str()?.to_string();
        let rest = line[end + 1..].strip_prefix(':')?;
        return Some((key, rest.trim_start()));
    }
    let idx = line.find(": ").or_else(|| line.ends_with(':').then(|| line.len() - 1))?;
    Some((line[..idx].trim_end().to_string(), line[idx + 1..].trim_start()))
}

fn decode_value(first: &str, cont: &[String]) -> Result<Value, String> {
    let first = first.trim();
    // PyYAML folds long scalars: a single line break becomes a space, an empty
    // line becomes a newline.
    let mut text = first.to_string();
    let mut pending_newlines = 0usize;
    for c in cont {
        let t = c.trim();
        if t.is_empty() {
            pending_newlines += 1;
            continue;
        }
        if pending_newlines > 0 {
            text.push_str(&"\n".repeat(pending_newlines));
            pending_newlines = 0;
        } else if text.ends_with('\\') && text.starts_with('"') {
            // Escaped line break in a double-quoted scalar: join without a space.
            text.pop();
        } else {
            text.push(' ');
        }
        text.push_str(t);
    }
    if let Some(body) = text.strip_prefix('\'') {
        let body = body.strip_suffix('\'').ok_or("unterminated single-quoted scalar")?;
        return Ok(Value::Str(body.replace("''", "'")));
    }
    if let Some(body) = text.strip_prefix('"') {
        let body = body.strip_suffix('"').ok_or("unterminated double-quoted scalar")?;
        return unescape_double(body).map(Value::Str);
    }
    // Plain scalar: drop a trailing comment.
    let plain = match text.find(" #") {
        Some(i) => text[..i].trim_end(),
        None => text.as_str(),
    };
    if plain.is_empty() || matches!(plain, "~" | "null" | "Null" | "NULL") {
        return Ok(Value::Null);
    }
    Ok(Value::Plain(plain.to_string()))
}

fn unescape_double(body: &str) -> Result<String, String> {
    let mut out = String::with_capacity(body.len());
    let mut it = body.chars();
    while let Some(c) = it.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let e = it.next().ok_or("dangling backslash")?;
        let hex = |it: &mut std::str::Chars, n: usize| -> Result<char, String> {
            let s: String = it.take(n).collect();
            let v = u32::from_str_radix(&s, 16).map_err(|_| format!("bad escape \\{e}{s}"))?;
            char::from_u32(v).ok_or_else(|| format!("bad code point {v:#x}"))
        };
        out.push(match e {
            '0' => '\0',
            'a' => '\x07',
            'b' => '\x08',
            't' | '\t' => '\t',
            'n' => '\n',
            'v' => '\x0b',
            'f' => '\x0c',
            'r' => '\r',
            'e' => '\x1b',
            ' ' => ' ',
            '"' => '"',
            '/' => '/',
            '\\' => '\\',
            'N' => '\u{85}',
            '_' => '\u{a0}',
            'L' => '\u{2028}',
            'P' => '\u{2029}',
            'x' => hex(&mut it, 2)?,
            'u' => hex(&mut it, 4)?,
            'U' => hex(&mut it, 8)?,
            other => return Err(format!("unknown escape \\{other}")),
        });
    }
    Ok(out)
}

fn quote_key(k: &str) -> String {
    if is_plain_safe(k) {
        k.to_string()
    } else {
        quote(k)
    }
}

/// Emits `s` so that PyYAML reads back exactly `s` as a string: plain when it
/// is unambiguous, single-quoted otherwise, double-quoted when it holds control
/// characters (single quotes would fold the newlines).
pub fn quote(s: &str) -> String {
    if is_plain_safe(s) {
        return s.to_string();
    }
    if s.chars().any(|c| c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}') {
        let mut out = String::from("\"");
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\t' => out.push_str("\\t"),
                '\r' => out.push_str("\\r"),
                c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' || c == '\u{feff}' => {
                    let _ = write!(out, "\\u{:04X}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        return out;
    }
    format!("'{}'", s.replace('\'', "''"))
}

/// Conservative: only ASCII text that YAML 1.1 cannot mistake for a number,
/// bool, null, date or syntax is left unquoted (PyYAML quotes a superset of
/// what it must, so do we).
fn is_plain_safe(s: &str) -> bool {
    let Some(first) = s.chars().next() else {
        return false;
    };
    if !(first.is_ascii_alphabetic() || first == '/' || first == '_') {
        return false;
    }
    if !s.chars().all(|c| c.is_ascii_alphanumeric() || "_-./: ~+=@%".contains(c)) {
        return false;
    }
    if s.ends_with(' ') || s.ends_with(':') || s.contains(": ") || s.contains(" #") || s.contains("  ") {
        return false;
    }
    let lower = s.to_ascii_lowercase();
    !matches!(lower.as_str(), "y" | "n" | "yes" | "no" | "true" | "false" | "on" | "off" | "null")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_quoting() {
        for s in [
            "plain",
            "0",
            "123",
            "true",
            "Yes",
            "null",
            "~",
            "",
            " lead",
            "trail ",
            "a: b",
            "a #b",
            "it's",
            "x\ny",
            "tab\there",
            "ünï",
            "-",
            "- x",
            "@at",
            "[x]",
            "{a}",
            "1e5",
            ".inf",
            "file:///tmp/a b/c",
            "a\\b",
            "\"q\"",
            "2024-01-01",
            "0x1F",
            "=",
            "<<",
        ] {
            let mut d = Doc::new();
            d.set_str("k", s);
            let back = Doc::parse(&d.to_yaml()).unwrap();
            assert_eq!(back.get_str("k"), Some(s), "yaml: {}", d.to_yaml());
        }
    }

    #[test]
    fn reads_pyyaml_output() {
        let text = "artifact_location: file:///tmp/pyref/ml runs/0\n\
                    creation_time: 1795931848369\n\
                    effective_trace_archival_retention: null\n\
                    entry_point_name: ''\n\
                    experiment_id: '0'\n\
                    name: a very long experiment name a very long experiment name a very long experiment\n\
                    \x20 name a very long experiment name yes\n\
                    tags: []\n";
        let d = Doc::parse(text).unwrap();
        assert_eq!(d.get_str("artifact_location"), Some("file:///tmp/pyref/ml runs/0"));
        assert_eq!(d.get("effective_trace_archival_retention"), Some(&Value::Null));
        assert_eq!(d.get_str("experiment_id"), Some("0"));
        assert_eq!(
            d.get_str("name"),
            Some("a very long experiment name a very long experiment name a very long experiment name a very long experiment name yes")
        );
        assert_eq!(d.get_str("entry_point_name"), Some(""));
        assert_eq!(d.get_str("tags"), Some("[]"));
        // Untouched entries are written back byte for byte (sorted).
        let again = Doc::parse(&d.to_yaml()).unwrap();
        assert_eq!(again, d);
        assert!(d.to_yaml().contains("experiment\n  name a very"));
    }
}
