//! The module import graph of a crate's `src/` and its cycles: the test that imports point one
//! way (docs/DESIGN.md §2).
//!
//! A module is a file (`lib.rs`/`main.rs` is `crate`, `a.rs` and `a/mod.rs` are `a`, `a/b.rs`
//! is `a::b`); inline `mod x { .. }` blocks belong to their file. An edge `a -> b` is a path in
//! `a` that names an item of `b`: `crate::b::..`, `super::..`, `self::..`, or a child module's
//! name, in `use` items (grouped trees `use crate::{b, c::d}` included) and in code. Comments
//! and string literals are skipped. A path through a re-export (`pub use` in a facade such as
//! `lib.rs` or a `mod.rs`) is followed to the module that defines the item: `crate::Memfd`
//! means `memfd`, not the root; the re-export itself is no edge (it is the facade's, not a use
//! by its code). An inline module (`mod tests { .. }`) is its own node,
//! `file::tests`, so a test's imports are not its file's. This is a lexical reading, not a
//! compiler's: a path through a `use` alias is seen at the `use`, which names the module
//! anyway; a glob re-export is not followed.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::Path;

/// The graph: each module and the modules it references (itself excluded).
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// The module graph of the crate whose sources are under `src_dir`.
///
/// # Errors
///
/// Errors reading the directory or a file.
pub fn graph(src_dir: &Path) -> io::Result<Graph> {
    let mut files = Vec::new();
    collect(src_dir, src_dir, &mut files)?;
    let modules: BTreeSet<Vec<String>> = files.iter().map(|(m, _)| m.clone()).collect();
    let refs: Vec<Ref> = files
        .iter()
        .flat_map(|(m, text)| references(m, text, &modules))
        .collect();
    // (facade module, re-exported name) -> the module it comes from.
    let mut reexports = BTreeMap::new();
    for r in refs.iter().filter(|r| r.public) {
        let (Some(m), Some(name)) = (longest(&r.path, &modules), r.path.last()) else {
            continue;
        };
        if m.len() < r.path.len() {
            reexports.insert((r.file.clone(), name.clone()), m);
        }
    }
    let mut g = Graph::new();
    for (m, _) in &files {
        g.entry(display(m)).or_default();
    }
    // A re-export is the facade of the module, not a use by its code: no edge.
    for r in refs.iter().filter(|r| !r.public) {
        let from = display(&r.from);
        let edges = g.entry(from.clone()).or_default();
        if let Some(to) = target(&r.path, &modules, &reexports) {
            let to = display(&to);
            if to != from {
                edges.insert(to);
            }
        }
    }
    Ok(g)
}

/// A path seen in a file, made absolute.
struct Ref {
    /// The file's module.
    file: Vec<String>,
    /// The module it is seen in (the file's, or an inline module in it).
    from: Vec<String>,
    /// The absolute path (no `crate`/`self`/`super`).
    path: Vec<String>,
    /// Seen in a `pub use` (a re-export).
    public: bool,
}

/// The longest prefix of `path` that is a file module.
fn longest(path: &[String], modules: &BTreeSet<Vec<String>>) -> Option<Vec<String>> {
    (0..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|p| modules.contains(p))
}

/// The module defining what `path` names, following re-exports (a few levels).
fn target(
    path: &[String],
    modules: &BTreeSet<Vec<String>>,
    reexports: &BTreeMap<(Vec<String>, String), Vec<String>>,
) -> Option<Vec<String>> {
    let mut m = longest(path, modules)?;
    let mut name = path.get(m.len());
    for _ in 0..8 {
        match name.and_then(|n| reexports.get(&(m.clone(), n.clone()))) {
            Some(next) if *next != m => {
                m = next.clone();
                name = path.last();
            }
            _ => break,
        }
    }
    Some(m)
}

/// The import cycles of the crate under `src_dir`: each strongly connected component of
/// [`graph`] with more than one module, its modules sorted; components sorted.
///
/// # Errors
///
/// Errors reading the sources.
pub fn cycles(src_dir: &Path) -> io::Result<Vec<Vec<String>>> {
    Ok(strongly_connected(&graph(src_dir)?)
        .into_iter()
        .filter(|c| c.len() > 1)
        .collect())
}

/// The graph's edges, one `a -> b` a line.
pub fn edges_text(g: &Graph) -> String {
    let mut s = String::new();
    for (a, bs) in g {
        for b in bs {
            s.push_str(&format!("{a} -> {b}\n"));
        }
    }
    s
}

fn display(module: &[String]) -> String {
    if module.is_empty() {
        "crate".into()
    } else {
        module.join("::")
    }
}

/// Every `.rs` file under `dir` with its module path.
fn collect(root: &Path, dir: &Path, out: &mut Vec<(Vec<String>, String)>) -> io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for e in entries {
        let path = e.path();
        if e.file_type()?.is_dir() {
            collect(root, &path, out)?;
        } else if path.extension().is_some_and(|x| x == "rs") {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let mut module: Vec<String> = rel
                .with_extension("")
                .iter()
                .map(|c| c.to_string_lossy().into_owned())
                .collect();
            let last = module.last().map(String::as_str);
            let is_root = module.len() == 1 && matches!(last, Some("lib" | "main"));
            if is_root || last == Some("mod") {
                module.pop();
            }
            out.push((module, std::fs::read_to_string(&path)?));
        }
    }
    Ok(())
}

/// A token of the lexical reading: an identifier (or keyword) or one punctuation character;
/// `::` is one token.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Path,
    Punct(char),
}

/// Tokens of `text` without comments, strings and character literals.
fn tokens(text: &str) -> Vec<Tok> {
    let b: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let next = b.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < b.len() && b[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < b.len() {
                if b[i] == '/' && b.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if b[i] == '*' && b.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && raw_string(&b, i).is_some()
        {
            i = raw_string(&b, i).unwrap_or(b.len());
        } else if c == '"' {
            i += 1;
            while i < b.len() && b[i] != '"' {
                i += if b[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '\'' {
            // A char literal ('x', '\n', '\u{..}') or a lifetime ('a).
            if next == Some('\\') {
                i += 2;
                while i < b.len() && b[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if b.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < b.len() && (b[i].is_alphanumeric() || b[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(b[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            out.push(Tok::Path);
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(Tok::Punct(c));
            }
            i += 1;
        }
    }
    out
}

/// The index past a raw string `r"..."` / `r#"..."#` starting at `i`, if one starts there.
fn raw_string(b: &[char], i: usize) -> Option<usize> {
    let mut j = i + 1;
    let mut hashes = 0;
    while b.get(j) == Some(&'#') {
        hashes += 1;
        j += 1;
    }
    if b.get(j) != Some(&'"') {
        return None;
    }
    j += 1;
    while j < b.len() {
        if b[j] == '"' && (1..=hashes).all(|k| b.get(j + k) == Some(&'#')) {
            return Some(j + 1 + hashes);
        }
        j += 1;
    }
    Some(b.len())
}

/// The modules `text` (the file of `module`) references.
fn references(module: &[String], text: &str, modules: &BTreeSet<Vec<String>>) -> Vec<Ref> {
    let toks = tokens(text);
    let mut out = Vec::new();
    let mut push = |here: &[String], path: Option<Vec<String>>, public: bool| {
        if let Some(path) = path {
            out.push(Ref {
                file: module.to_vec(),
                from: here.to_vec(),
                path,
                public,
            });
        }
    };
    // Inline modules open at this point: (name, brace depth inside it).
    let mut inline: Vec<(String, usize)> = Vec::new();
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(inline.iter().map(|(n, _)| n.clone()))
            .collect();
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if inline.last().is_some_and(|&(_, d)| d > depth) {
                    inline.pop();
                }
            }
            Tok::Ident(k) if k == "mod" => {
                if let (Some(Tok::Ident(name)), Some(Tok::Punct('{'))) =
                    (toks.get(i + 1), toks.get(i + 2))
                {
                    depth += 1;
                    inline.push((name.clone(), depth));
                    i += 3;
                    continue;
                }
            }
            Tok::Ident(k) if k == "use" => {
                let public = i > 0 && is_pub_before(&toks, i);
                let mut paths = Vec::new();
                let end = use_tree(&toks, i + 1, Vec::new(), &mut paths);
                for p in paths {
                    push(&here, resolve(&p, &here, module, modules), public);
                }
                i = end;
                continue;
            }
            Tok::Ident(first)
                if !matches!(toks.get(i.wrapping_sub(1)), Some(Tok::Path))
                    && toks.get(i + 1) == Some(&Tok::Path) =>
            {
                let mut path = vec![first.clone()];
                let mut j = i + 1;
                while let (Some(Tok::Path), Some(Tok::Ident(s))) = (toks.get(j), toks.get(j + 1)) {
                    path.push(s.clone());
                    j += 2;
                }
                push(&here, resolve(&path, &here, module, modules), false);
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// Whether the `use` at `i` is `pub` (`pub use`, `pub(crate) use`, ...).
fn is_pub_before(toks: &[Tok], i: usize) -> bool {
    match toks.get(i - 1) {
        Some(Tok::Ident(p)) => p == "pub",
        Some(Tok::Punct(')')) => toks[..i]
            .iter()
            .rposition(|t| *t == Tok::Punct('('))
            .is_some_and(|o| o > 0 && toks[o - 1] == Tok::Ident("pub".into())),
        _ => false,
    }
}

/// Reads a use tree at `i` under `prefix`, pushing each full path into `out`; returns the
/// index past the tree (past the `;` at the top level).
fn use_tree(
    toks: &[Tok],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    loop {
        match toks.get(i) {
            Some(Tok::Path) => i += 1,
            Some(Tok::Ident(s)) if s == "as" => {
                out.push(prefix);
                return skip_to_end(toks, i + 2);
            }
            Some(Tok::Ident(s)) => {
                prefix.push(s.clone());
                i += 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match toks.get(i) {
                        Some(Tok::Punct('}')) => return skip_to_end(toks, i + 1),
                        Some(Tok::Punct(',')) => i += 1,
                        None => return i,
                        _ => i = use_tree(toks, i, prefix.clone(), out),
                    }
                }
            }
            Some(Tok::Punct('*')) => {
                out.push(prefix);
                return skip_to_end(toks, i + 1);
            }
            _ => {
                out.push(prefix);
                return skip_to_end(toks, i);
            }
        }
    }
}

/// Past a `;` at `i` (the end of the item); at `,` or `}` (the end of a subtree) stays.
fn skip_to_end(toks: &[Tok], i: usize) -> usize {
    match toks.get(i) {
        Some(Tok::Punct(';')) => i + 1,
        _ => i,
    }
}

/// The absolute path of `path` (seen in the scope `here`, inside the file of `module`), if it
/// names something of the crate's.
fn resolve(
    path: &[String],
    here: &[String],
    module: &[String],
    modules: &BTreeSet<Vec<String>>,
) -> Option<Vec<String>> {
    let first = path.first()?;
    let abs: Vec<String> = match first.as_str() {
        "crate" => path[1..].to_vec(),
        "self" => here.iter().chain(&path[1..]).cloned().collect(),
        "super" => {
            let ups = path.iter().take_while(|s| *s == "super").count();
            let base = here.get(..here.len().checked_sub(ups)?)?;
            base.iter().chain(&path[ups..]).cloned().collect()
        }
        _ => {
            // A child module of the current file, named without a prefix.
            let mut child = module.to_vec();
            child.push(first.clone());
            if !modules.contains(&child) {
                return None;
            }
            module.iter().chain(path).cloned().collect()
        }
    };
    longest(&abs, modules).map(|_| abs)
}

/// Tarjan's strongly connected components, each sorted, the list sorted.
fn strongly_connected(g: &Graph) -> Vec<Vec<String>> {
    struct State<'g> {
        g: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g str) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        let g = s.g;
        for w in g.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if s.on_stack.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            comp.sort();
            s.out.push(comp);
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}
