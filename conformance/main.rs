//! The conformance target: `cargo test --release --test conformance`.
//!
//! conformance/requirements.toml lists every requirement Kura claims or disclaims, each with
//! the test that shows it; conformance/STATEMENT.md is the Conformance Statement for
//! integrators. The two tests in this file keep them honest: every requirement is well formed
//! and names a test that exists, every requirement test here is named by a requirement, and
//! the statement's requirement table says what requirements.toml says.
//!
//! The per-transaction modules hold the requirement tests that need no more than a running
//! server. A test of a requirement that is not met asserts today's refusal, with a FIXME, so
//! that the day the behaviour changes the test, the TOML and the statement change together.

/// In-process server, generated DICOM instances, HTTP helpers.
#[path = "../tests/support/mod.rs"]
mod support;

/// STOW-RS, PS3.18 §10.5 and Annex I.
mod stow;

/// QIDO-RS, PS3.18 §10.6 and §8.3.4, PS3.4 C.2.2.
mod qido;

/// WADO-RS, PS3.18 §10.4, with the rendered and thumbnail resources.
mod wado;

/// Services that are not implemented: WADO-URI (Ch. 9), Retrieve Capabilities (§8.9), UPS-RS
/// (Ch. 11); and the HTTP aspects common to all (§8.4, §8.5) and security (§8.11).
mod services;

/// Character sets (PS3.18 §8.8, Annex F; PS3.5 §6.1).
mod charset;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The statuses a requirement may have.
const STATUSES: [&str; 3] = ["met", "partial", "not met"];
/// Keys of a `[[requirement]]` table.
const KEYS: [&str; 6] = ["id", "section", "summary", "status", "reason", "test"];

/// One `[[requirement]]` of requirements.toml.
#[derive(Debug, Clone, Default)]
struct Requirement {
    /// Line of its `[[requirement]]` header, for messages.
    line: usize,
    fields: BTreeMap<String, String>,
}

impl Requirement {
    fn get(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Parses a TOML basic string (`"..."` with `\"`, `\\`, `\n`, `\t` escapes) that makes up the
/// whole of `text`.
fn basic_string(text: &str) -> Result<String, String> {
    let inner = text
        .strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .ok_or_else(|| format!("expected a \"quoted\" string, found {text}"))?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('"') => out.push('"'),
                Some('\\') => out.push('\\'),
                Some('n') => out.push('\n'),
                Some('t') => out.push('\t'),
                other => return Err(format!("unsupported escape \\{}", other.map(String::from).unwrap_or_default())),
            },
            '"' => return Err("unescaped quote inside a string".into()),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// A parser for the one shape requirements.toml has: comments, blank lines, `[[requirement]]`
/// headers, and `key = "basic string"` lines. Anything else is an error, so the file cannot
/// drift into TOML this parser would misread.
fn parse_requirements(text: &str) -> Result<Vec<Requirement>, String> {
    let mut requirements: Vec<Requirement> = Vec::new();
    for (index, raw) in text.lines().enumerate() {
        let number = index + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line == "[[requirement]]" {
            requirements.push(Requirement { line: number, ..Requirement::default() });
            continue;
        }
        let (key, value) = line.split_once('=').ok_or_else(|| format!("line {number}: not `key = \"value\"`"))?;
        let key = key.trim();
        if !KEYS.contains(&key) {
            return Err(format!("line {number}: unknown key {key:?}"));
        }
        let value = basic_string(value.trim()).map_err(|e| format!("line {number}: {e}"))?;
        let requirement =
            requirements.last_mut().ok_or_else(|| format!("line {number}: key before any [[requirement]]"))?;
        if requirement.fields.insert(key.to_string(), value).is_some() {
            return Err(format!("line {number}: {key} given twice"));
        }
    }
    Ok(requirements)
}

/// `STOW-012`: upper-case letters, a dash, three digits.
fn is_requirement_id(text: &str) -> bool {
    let Some((prefix, number)) = text.split_once('-') else { return false };
    !prefix.is_empty()
        && prefix.bytes().all(|b| b.is_ascii_uppercase())
        && number.len() == 3
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// `stow_012_…` → `STOW-012`; None for names of other functions.
fn requirement_of_test(name: &str) -> Option<String> {
    let mut pieces = name.splitn(3, '_');
    let (prefix, number, rest) = (pieces.next()?, pieces.next()?, pieces.next()?);
    let id = format!("{}-{number}", prefix.to_ascii_uppercase());
    (prefix.bytes().all(|b| b.is_ascii_lowercase()) && !rest.is_empty() && is_requirement_id(&id)).then_some(id)
}

/// Names of every `fn` in a Rust source text.
fn function_names(source: &str) -> Vec<String> {
    let mut names = Vec::new();
    let bytes = source.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut from = 0;
    while let Some(found) = source[from..].find("fn ") {
        let at = from + found;
        from = at + 3;
        if at > 0 && is_ident(bytes[at - 1]) {
            continue;
        }
        let name: String = source[from..].trim_start().bytes().take_while(|b| is_ident(*b)).map(char::from).collect();
        if !name.is_empty() {
            names.push(name);
        }
    }
    names
}

/// The `.rs` files directly in `dir`.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|entry| entry.expect("entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .collect();
    files.sort();
    files
}

fn load_requirements() -> Vec<Requirement> {
    parse_requirements(&read(&root().join("conformance/requirements.toml")))
        .unwrap_or_else(|e| panic!("conformance/requirements.toml: {e}"))
}

#[test]
fn requirements_are_well_formed_and_name_existing_tests() {
    let requirements = load_requirements();
    assert!(!requirements.is_empty(), "requirements.toml lists no requirement");
    let mut problems = Vec::new();
    let mut ids = BTreeSet::new();
    for requirement in &requirements {
        let id = requirement.get("id");
        let at = format!("requirements.toml:{} ({id})", requirement.line);
        for key in ["id", "section", "summary", "status"] {
            if requirement.get(key).trim().is_empty() {
                problems.push(format!("{at}: {key} is missing or empty"));
            }
        }
        if !is_requirement_id(id) {
            problems.push(format!("{at}: id is not of the form ABC-123"));
        }
        if !ids.insert(id.to_string()) {
            problems.push(format!("{at}: id is used twice"));
        }
        let status = requirement.get("status");
        if !STATUSES.contains(&status) {
            problems.push(format!("{at}: status {status:?} is not one of {STATUSES:?}"));
        }
        if status != "met" && requirement.get("reason").trim().is_empty() {
            problems.push(format!("{at}: a {status:?} requirement needs a reason"));
        }
        if status != "not met" && requirement.get("test").trim().is_empty() {
            problems.push(format!("{at}: a {status:?} requirement needs a test"));
        }
    }

    // Every function of the integration tests and of this target, by file.
    let mut sources = rust_files(&root().join("tests/it"));
    sources.extend(rust_files(&root().join("conformance")));
    let mut functions: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for path in &sources {
        for name in function_names(&read(path)) {
            functions.entry(name).or_default().push(path.clone());
        }
    }
    for requirement in &requirements {
        let test = requirement.get("test");
        if !test.is_empty() && !functions.contains_key(test) {
            problems.push(format!(
                "requirements.toml:{} ({}): no `fn {test}` in tests/it/*.rs or conformance/*.rs",
                requirement.line,
                requirement.get("id")
            ));
        }
    }

    // Every requirement test of this target is named by the requirement whose id it carries.
    let test_of: BTreeMap<&str, &str> = requirements.iter().map(|r| (r.get("id"), r.get("test"))).collect();
    for path in rust_files(&root().join("conformance")) {
        for name in function_names(&read(&path)) {
            let Some(id) = requirement_of_test(&name) else { continue };
            match test_of.get(id.as_str()) {
                None => problems.push(format!(
                    "{}: `fn {name}` is named after {id}, which is not in requirements.toml",
                    path.display()
                )),
                Some(test) if *test != name => problems.push(format!(
                    "{}: `fn {name}` looks like the test of {id}, but {id} names {test:?}",
                    path.display()
                )),
                Some(_) => {}
            }
        }
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn statement_lists_every_requirement_with_its_status() {
    let requirements = load_requirements();
    let statement = read(&root().join("conformance/STATEMENT.md"));
    // Table rows whose first cell is a requirement id: `| STOW-001 | … | met |`.
    let mut listed: BTreeMap<String, (usize, String)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (index, line) in statement.lines().enumerate() {
        let line = line.trim();
        if !line.starts_with('|') {
            continue;
        }
        let cells: Vec<&str> = line.trim_matches('|').split('|').map(|c| c.trim().trim_matches('`')).collect();
        let Some(id) = cells.first().filter(|c| is_requirement_id(c)) else { continue };
        let status = cells.last().copied().unwrap_or("").to_string();
        if listed.insert(id.to_string(), (index + 1, status)).is_some() {
            problems.push(format!("STATEMENT.md:{}: {id} is listed twice", index + 1));
        }
    }
    for requirement in &requirements {
        let id = requirement.get("id");
        match listed.remove(id) {
            None => problems.push(format!("{id} ({}) is not in the STATEMENT.md table", requirement.get("status"))),
            Some((line, status)) if status != requirement.get("status") => problems.push(format!(
                "STATEMENT.md:{line}: {id} is {status:?} there but {:?} in requirements.toml",
                requirement.get("status")
            )),
            Some(_) => {}
        }
    }
    for (id, (line, _)) in listed {
        problems.push(format!("STATEMENT.md:{line}: {id} is not in requirements.toml"));
    }
    assert!(problems.is_empty(), "{} problem(s):\n{}", problems.len(), problems.join("\n"));
}

#[test]
fn the_requirement_parser_refuses_what_it_does_not_understand() {
    let good = "# c\n[[requirement]]\nid = \"STOW-001\"\nsummary = \"a \\\"quoted\\\" word\"\n";
    let parsed = parse_requirements(good).unwrap();
    assert_eq!(parsed[0].get("summary"), "a \"quoted\" word");
    assert!(parse_requirements("id = \"X-001\"").is_err(), "key outside a table");
    assert!(parse_requirements("[[requirement]]\nid = 'X-001'").is_err(), "literal string");
    assert!(parse_requirements("[[requirement]]\nfoo = \"x\"").is_err(), "unknown key");
    assert!(parse_requirements("[[requirement]]\nid = \"a\"\nid = \"b\"").is_err(), "duplicate key");
    assert_eq!(requirement_of_test("stow_012_unsupported_media_type_is_415"), Some("STOW-012".into()));
    assert_eq!(requirement_of_test("stow_accepting"), None);
    assert_eq!(function_names("pub async fn a_b() {}\nfn c<T>() {}\nlet unfn x;"), vec!["a_b", "c"]);
}
