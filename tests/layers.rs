//! The import structure of `src/`, checked: no two files import each other in a loop,
//! and no module imports one from a higher layer than its own. The layers are the list
//! under "## Layers" in ARCHITECTURE.md, bottom to top; a new top-level module must be
//! placed there before it can be imported.
//!
//! An import is every path the code names through `crate::`, `super::`, `self::`,
//! `stallwatch::` (the binary's files) or a child module's name, in a `use` or inline.
//! Comments, strings and char literals are blanked first, so a path in a doc comment or
//! a message is not an import. A path resolves to the file of its longest module prefix:
//! `crate::config::source::Location` is `src/config/source.rs`, `crate::config::redact_url`
//! is `src/config/mod.rs` (a re-export counts as an import of the file that re-exports).
//! `lib.rs` only names the modules and is left out, and so are `#[cfg(test)]` modules,
//! inline, in a file of their own, or in a file beside their parent (`#[path]`): a test may
//! import anything.
//!
//! Run alone: `cargo nextest run -E 'binary(layers)'`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// One file's module path (`["config", "source"]` for `src/config/source.rs`).
type ModPath = Vec<String>;

/// What the check found.
#[derive(Debug, Default)]
struct Findings {
    /// Each loop, as the files on it in order.
    loops: Vec<Vec<String>>,
    /// `file -> file (module layer N -> module layer M)` for every upward import.
    upward: Vec<String>,
    /// Top-level modules that are not in the layer list.
    unplaced: BTreeSet<String>,
}

impl Findings {
    fn is_clean(&self) -> bool {
        self.loops.is_empty() && self.upward.is_empty() && self.unplaced.is_empty()
    }
}

#[test]
fn src_has_no_import_loop_and_no_upward_import() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let architecture = std::fs::read_to_string(root.join("ARCHITECTURE.md")).unwrap();
    let layers = parse_layers(&architecture);
    assert!(
        layers.len() >= 5,
        "ARCHITECTURE.md has no \"## Layers\" list of five or more: {layers:?}"
    );
    let mut files = BTreeMap::new();
    read_tree(&root.join("src"), root, &mut files);
    assert!(files.len() > 50, "read only {} files", files.len());
    let edges = imports(&files);
    assert!(
        edges.values().map(BTreeSet::len).sum::<usize>() > 200,
        "found almost no imports: the reader is broken"
    );
    let found = check(&edges, &layers);
    assert!(
        found.is_clean(),
        "loops: {:#?}\nupward imports: {:#?}\nmodules missing from ARCHITECTURE.md's layers: {:?}",
        found.loops,
        found.upward,
        found.unplaced
    );
}

#[test]
fn a_loop_between_two_files_is_found() {
    let files = tree(&[
        ("a/mod.rs", "pub mod x;\npub mod y;\n"),
        ("a/x.rs", "use super::y::Y;\npub struct X;"),
        (
            "a/y.rs",
            "pub struct Y;\nfn f() -> crate::a::x::X { todo!() }",
        ),
    ]);
    let found = check(&imports(&files), &layers(&[&["a"]]));
    assert_eq!(found.loops, vec![vec![in_src("a/x.rs"), in_src("a/y.rs")]]);
}

#[test]
fn an_import_from_a_higher_layer_is_found() {
    let files = tree(&[
        ("low.rs", "use crate::high::H;"),
        ("high.rs", "pub struct H;"),
    ]);
    let found = check(&imports(&files), &layers(&[&["low"], &["high"]]));
    assert_eq!(found.upward.len(), 1, "{found:?}");
    assert!(found.upward[0].starts_with(&format!("{} -> {}", in_src("low.rs"), in_src("high.rs"))));
    let unplaced = check(&imports(&files), &layers(&[&["high"]]));
    assert_eq!(unplaced.unplaced, BTreeSet::from(["low".to_string()]));
}

#[test]
fn comments_strings_and_chars_are_not_imports_and_hide_none() {
    let files = tree(&[
        (
            "a.rs",
            "//! see crate::b::B\n/* crate::b /* nested */ crate::b */\n\
             const Q: char = '\"'; const L: &str = \"crate::b::B\"; const R: &str = r#\"crate::b\"#;\n\
             fn f<'x>(s: &'x str) -> char { '\\'' }\nuse crate::c::C;\n",
        ),
        ("b.rs", "pub struct B;"),
        (
            "c.rs",
            "pub struct C;\nmod inner {\n    use super::C;\n}\n#[cfg(test)]\nmod tests {\n    use crate::a::A;\n}\n#[cfg(test)]\nmod more;\n\
             #[cfg(test)]\n#[path = \"c_tests.rs\"]\nmod beside;\n",
        ),
        ("c/more.rs", "use crate::b::B;"),
        ("c_tests.rs", "use crate::a::A;"),
    ]);
    let edges = imports(&files);
    assert_eq!(
        edges.get(&in_src("a.rs")),
        Some(&BTreeSet::from([in_src("c.rs")])),
        "{edges:?}"
    );
    // `super` inside an inline module is the file itself, not its parent; a test module's
    // imports (inline or its own file) are not counted.
    assert!(
        edges.get(&in_src("c.rs")).is_none_or(BTreeSet::is_empty),
        "{edges:?}"
    );
    assert!(!edges.contains_key(&in_src("c/more.rs")), "{edges:?}");
    assert!(!edges.contains_key(&in_src("c_tests.rs")), "{edges:?}");
}

// ---- reading ------------------------------------------------------------------------

/// A small tree of files under `src/` (named without it, so no test names a path the
/// repository does not have).
fn tree(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(p, t)| (in_src(p), t.to_string()))
        .collect()
}

fn in_src(path: &str) -> String {
    format!("{}{path}", "src/")
}

fn layers(list: &[&[&str]]) -> Vec<Vec<String>> {
    list.iter()
        .map(|l| l.iter().map(|s| s.to_string()).collect())
        .collect()
}

fn read_tree(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            read_tree(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            out.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
}

/// The numbered list under "## Layers": each line's backticked names, bottom first.
fn parse_layers(architecture: &str) -> Vec<Vec<String>> {
    let Some(start) = architecture.find("\n## Layers") else {
        return Vec::new();
    };
    let section = &architecture[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
    section
        .lines()
        .filter(|l| {
            l.trim_start()
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_digit())
        })
        .map(|line| {
            // Names before the dash; what follows is what the layer is for.
            let names = line.split(" — ").next().unwrap_or(line);
            names
                .split('`')
                .skip(1)
                .step_by(2)
                .map(str::to_string)
                .collect()
        })
        .collect()
}

/// `src/config/source.rs` → `["config", "source"]`; `mod.rs` names its folder.
fn module_of(file: &str) -> ModPath {
    let inner = file.trim_start_matches("src/").trim_end_matches(".rs");
    let mut parts: ModPath = inner.split('/').map(str::to_string).collect();
    if parts.last().is_some_and(|p| p == "mod" || p == "lib") {
        parts.pop();
    }
    parts
}

/// The top-level module a file belongs to.
fn top_of(file: &str) -> String {
    module_of(file)
        .first()
        .cloned()
        .unwrap_or_else(|| "lib".into())
}

/// Code with comments, strings and char literals blanked (newlines kept).
fn code_only(text: &str) -> String {
    let b: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let blank = |out: &mut String, c: char| out.push(if c == '\n' { '\n' } else { ' ' });
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
                out.push(' ');
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
        } else if (c == 'r' || (c == 'b' && next == Some('r')))
            && !prev_is_ident(&b, i)
            && raw_string_hashes(&b, i + if c == 'b' { 2 } else { 1 }).is_some()
        {
            let open = i + if c == 'b' { 2 } else { 1 };
            let hashes = raw_string_hashes(&b, open).unwrap();
            let body = open + hashes + 1;
            let mut j = body;
            while j < b.len()
                && !(b[j] == '"' && (0..hashes).all(|k| b.get(j + 1 + k) == Some(&'#')))
            {
                j += 1;
            }
            let end = (j + 1 + hashes).min(b.len());
            for &ch in &b[i..end] {
                blank(&mut out, ch);
            }
            i = end;
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '"' {
                if b[i] == '\\' {
                    blank(&mut out, b[i]);
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' && is_char_literal(&b, i) {
            out.push(' ');
            i += 1;
            while i < b.len() && b[i] != '\'' {
                if b[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < b.len() {
                    blank(&mut out, b[i]);
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn prev_is_ident(b: &[char], i: usize) -> bool {
    i > 0 && (b[i - 1].is_alphanumeric() || b[i - 1] == '_')
}

/// At `open`: `#`* then `"` — a raw string's opening, with how many hashes.
fn raw_string_hashes(b: &[char], open: usize) -> Option<usize> {
    let hashes = b[open.min(b.len())..]
        .iter()
        .take_while(|&&c| c == '#')
        .count();
    (b.get(open + hashes) == Some(&'"')).then_some(hashes)
}

/// `'x'`, `'\n'`, `'\u{1F600}'` are char literals; `'a` in `&'a str` is a lifetime.
fn is_char_literal(b: &[char], i: usize) -> bool {
    match b.get(i + 1) {
        Some('\\') => true,
        Some(_) => b.get(i + 2) == Some(&'\''),
        None => false,
    }
}

/// Inline `mod NAME { … }` blocks of a file: (start, end, name).
fn inline_modules(code: &str) -> Vec<(usize, usize, String)> {
    let bytes = code.as_bytes();
    let mut found = Vec::new();
    let mut at = 0;
    while let Some(k) = code[at..].find("mod ") {
        let start = at + k;
        at = start + 4;
        if start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_') {
            continue;
        }
        let rest = &code[start + 4..];
        let name: String = rest
            .trim_start()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        let after = rest.trim_start()[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0;
        let mut end = code.len();
        for (j, ch) in code[open..].char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = open + j;
                        break;
                    }
                }
                _ => {}
            }
        }
        found.push((start, end, name));
    }
    found
}

/// `code` with every `#[cfg(test)]` inline module blanked: a test may use anything.
fn without_test_modules(code: &str) -> String {
    let mut out = code.to_string();
    for (start, end, _) in inline_modules(code) {
        if code[..start].trim_end().ends_with("#[cfg(test)]") {
            let blank: String = code[start..=end.min(code.len() - 1)]
                .chars()
                .map(|c| if c == '\n' { '\n' } else { ' ' })
                .collect();
            out.replace_range(start..=end.min(code.len() - 1), &blank);
        }
    }
    out
}

/// Files that are `#[cfg(test)] mod name;` of their parent, or `#[cfg(test)] #[path =
/// "file.rs"] mod name;` of the file beside them: tests, left out like inline ones.
fn test_module_files(
    files: &BTreeMap<String, String>,
    modules: &BTreeMap<ModPath, String>,
) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for (file, text) in files {
        // `code_only` keeps one char per char, so a char index in it is one in `text`.
        let code: Vec<char> = code_only(text).chars().collect();
        let raw: Vec<char> = text.chars().collect();
        let here = if file == "src/main.rs" {
            Vec::new()
        } else {
            module_of(file)
        };
        let marker: Vec<char> = "#[cfg(test)]".chars().collect();
        let mut at = 0;
        while let Some(found_at) = find_chars(&code, &marker, at) {
            at = found_at + marker.len();
            let mut i = skip_space(&code, at);
            // `#[path = "…"]`: the value, read from the text (strings are blank in code).
            let mut path = None;
            if code[i..].starts_with(&['#', '[']) && word_at(&code, i + 2) == "path" {
                let Some(end) = (i..code.len()).find(|&k| code[k] == ']') else {
                    continue;
                };
                let attribute: String = raw[i..end].iter().collect();
                path = attribute.split('"').nth(1).map(str::to_string);
                i = skip_space(&code, end + 1);
            }
            for vis in ["pub(crate) ", "pub "] {
                if code[i..].starts_with(&vis.chars().collect::<Vec<_>>()) {
                    i = skip_space(&code, i + vis.len());
                }
            }
            if word_at(&code, i) != "mod" {
                continue;
            }
            i = skip_space(&code, i + 3);
            let name = word_at(&code, i);
            if code.get(skip_space(&code, i + name.len())) != Some(&';') {
                continue;
            }
            match path {
                Some(path) => {
                    let dir = file.rsplit_once('/').map_or("", |(d, _)| d);
                    let beside = format!("{dir}/{path}");
                    if files.contains_key(&beside) {
                        found.insert(beside);
                    }
                }
                None => {
                    if let Some(f) = modules.get(&[here.clone(), vec![name]].concat()) {
                        found.insert(f.clone());
                    }
                }
            }
        }
    }
    found
}

fn find_chars(hay: &[char], needle: &[char], from: usize) -> Option<usize> {
    (from..hay.len().saturating_sub(needle.len() - 1)).find(|&i| hay[i..].starts_with(needle))
}

fn skip_space(code: &[char], mut i: usize) -> usize {
    while code.get(i).is_some_and(|c| c.is_whitespace()) {
        i += 1;
    }
    i
}

/// The identifier starting at `i` (empty if none).
fn word_at(code: &[char], i: usize) -> String {
    code.iter()
        .skip(i)
        .take_while(|c| c.is_alphanumeric() || **c == '_')
        .collect()
}

/// `a::{b, c::{d, e as f}, g::*}` → `a::b`, `a::c::d`, `a::c::e`, `a::g`.
fn expand_use(tree: &str) -> Vec<String> {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let prefix = &tree[..open];
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let mut items = Vec::new();
        let (mut depth, mut cur) = (0, String::new());
        for ch in inner.chars() {
            match ch {
                '{' => depth += 1,
                '}' => depth -= 1,
                _ => {}
            }
            if ch == ',' && depth == 0 {
                items.push(std::mem::take(&mut cur));
            } else {
                cur.push(ch);
            }
        }
        items.push(cur);
        return items
            .iter()
            .filter(|i| !i.trim().is_empty())
            .flat_map(|i| expand_use(i))
            .map(|i| format!("{prefix}{i}"))
            .collect();
    }
    let path = tree.split(" as ").next().unwrap_or(tree);
    vec![path.trim().trim_end_matches("::*").to_string()]
}

/// Every `a::b` path in `code` outside `use`; the caller keeps ours (`crate`, `super`,
/// `self`, `stallwatch` or a child module's name).
fn inline_paths(code: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let chars: Vec<(usize, char)> = code.char_indices().collect();
    let mut k = 0;
    while k < chars.len() {
        let (pos, c) = chars[k];
        let starts_word = c.is_alphabetic()
            && (k == 0 || {
                let p = chars[k - 1].1;
                !(p.is_alphanumeric() || p == '_' || p == ':')
            });
        if !starts_word {
            k += 1;
            continue;
        }
        let mut end = k;
        while end < chars.len()
            && (chars[end].1.is_alphanumeric() || chars[end].1 == '_' || chars[end].1 == ':')
        {
            end += 1;
        }
        let word = &code[pos..chars.get(end).map_or(code.len(), |c| c.0)];
        let head = word.split("::").next().unwrap_or("");
        if word.contains("::") && !head.is_empty() {
            found.push((pos, word.trim_end_matches(':').to_string()));
        }
        k = end.max(k + 1);
    }
    found
}

/// Which file every file imports.
fn imports(files: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let modules: BTreeMap<ModPath, String> = files
        .keys()
        .filter(|f| f.as_str() != "src/main.rs")
        .map(|f| (module_of(f), f.clone()))
        .collect();
    let resolve = |segs: &[String]| -> Option<&String> {
        (0..=segs.len()).rev().find_map(|n| modules.get(&segs[..n]))
    };
    let test_files = test_module_files(files, &modules);
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (file, text) in files {
        if file == "src/lib.rs" || test_files.contains(file) {
            continue;
        }
        let me = if file == "src/main.rs" {
            Vec::new()
        } else {
            module_of(file)
        };
        let code = without_test_modules(&code_only(text));
        let inline = inline_modules(&code);
        let module_at = |pos: usize| -> ModPath {
            let mut m = me.clone();
            m.extend(
                inline
                    .iter()
                    .filter(|(a, b, _)| *a <= pos && pos <= *b)
                    .map(|(_, _, n)| n.clone()),
            );
            m
        };
        let mut paths: Vec<(usize, String)> = Vec::new();
        let mut at = 0;
        while let Some(k) = code[at..].find("use ") {
            let start = at + k;
            at = start + 4;
            let before = code[..start].chars().next_back();
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let Some(semi) = code[start..].find(';') else {
                break;
            };
            let tree: String = code[start + 4..start + semi]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            paths.extend(expand_use(&tree).into_iter().map(|p| (start, p)));
            at = start + semi;
        }
        paths.extend(inline_paths(&code));
        for (pos, path) in paths {
            let path: String = path.chars().filter(|c| !c.is_whitespace()).collect();
            let segs: Vec<String> = path
                .split("::")
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect();
            let Some(first) = segs.first() else { continue };
            let here = module_at(pos);
            let absolute: ModPath = match first.as_str() {
                "crate" | "stallwatch" => segs[1..].to_vec(),
                "super" | "self" => {
                    let mut cur = here.clone();
                    let mut rest = &segs[..];
                    while let Some(s) = rest.first() {
                        match s.as_str() {
                            "super" => {
                                cur.pop();
                            }
                            "self" => {}
                            _ => break,
                        }
                        rest = &rest[1..];
                    }
                    cur.extend(rest.iter().cloned());
                    cur
                }
                child
                    if modules.contains_key(&[here.clone(), vec![child.to_string()]].concat()) =>
                {
                    [here.clone(), segs.clone()].concat()
                }
                _ => continue,
            };
            if let Some(target) = resolve(&absolute) {
                if target != file && target != "src/lib.rs" {
                    edges
                        .entry(file.clone())
                        .or_default()
                        .insert(target.clone());
                }
            }
        }
    }
    edges
}

// ---- checking -----------------------------------------------------------------------

fn check(edges: &BTreeMap<String, BTreeSet<String>>, layers: &[Vec<String>]) -> Findings {
    let layer_of: BTreeMap<&str, usize> = layers
        .iter()
        .enumerate()
        .flat_map(|(n, names)| names.iter().map(move |m| (m.as_str(), n + 1)))
        .collect();
    let mut found = Findings::default();
    for (from, tos) in edges {
        for to in tos {
            let (a, b) = (top_of(from), top_of(to));
            match (layer_of.get(a.as_str()), layer_of.get(b.as_str())) {
                (Some(la), Some(lb)) if lb > la => found.upward.push(format!(
                    "{from} -> {to} ({a} is layer {la}, {b} layer {lb})"
                )),
                (None, _) => {
                    found.unplaced.insert(a);
                }
                (_, None) => {
                    found.unplaced.insert(b);
                }
                _ => {}
            }
        }
    }
    found.loops = loops(edges);
    found
}

/// The strongly connected groups of two or more files (Tarjan), each sorted.
fn loops(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct Walk<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        groups: Vec<Vec<String>>,
    }
    impl<'a> Walk<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                if !self.index.contains_key(w.as_str()) {
                    self.visit(w);
                    let lw = self.low[w.as_str()];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if self.on_stack.contains(w.as_str()) {
                    let iw = self.index[w.as_str()];
                    let lv = self.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
            if self.low[v] == self.index[v] {
                let mut group = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    group.push(w.to_string());
                    if w == v {
                        break;
                    }
                }
                if group.len() > 1 {
                    group.sort();
                    self.groups.push(group);
                }
            }
        }
    }
    let mut walk = Walk {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        groups: Vec::new(),
    };
    for v in edges.keys() {
        if !walk.index.contains_key(v.as_str()) {
            walk.visit(v);
        }
    }
    walk.groups
}
