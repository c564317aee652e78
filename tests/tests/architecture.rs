//! The architecture invariants of ARCHITECTURE.md, checked on the source code.
//!
//! - `pikett-core` is pure: it names no runtime, storage, network or process crate, and it
//!   never reads the clock or touches files (every function takes `now`).
//! - The collector's layers import only downwards: `store` < `notify` < `config` <
//!   `services` < `api` < the wiring (`server.rs`, `main.rs`, `offline_sla.rs`); only
//!   `store/` names sled, only `api/` and the wiring speak tonic's server side or axum.
//! - The staff CLI links neither the collector nor a storage engine.
//! - No import cycles between the files of any crate (a module and its own submodules do
//!   not count: a parent declaring a trait its children implement is the usual shape).
//!
//! Paths are read with `syn`, including the tokens of macro calls; comments and strings
//! do not count. Test-only modules (`#[cfg(test)]`) are left out: tests may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// One source file of a crate: its module path (`["services", "pager"]`) and what it names.
#[derive(Debug)]
struct Module {
    file: PathBuf,
    /// Paths of the crate named by this file, resolved to absolute module paths.
    crate_paths: Vec<Vec<String>>,
    /// First segments of every other path (external crates, `std`, …).
    external: BTreeSet<String>,
    /// `Type::now` / `std::fs` and the like, as written.
    full_paths: Vec<String>,
}

struct Collector<'a> {
    module: &'a [String],
    crate_paths: Vec<Vec<String>>,
    external: BTreeSet<String>,
    full_paths: Vec<String>,
    test_children: Vec<String>,
}

fn is_cfg_test(attrs: &[syn::Attribute]) -> bool {
    attrs
        .iter()
        .any(|a| a.path().is_ident("cfg") && a.meta.require_list().is_ok_and(|l| l.tokens.to_string().contains("test")))
}

impl Collector<'_> {
    fn record(&mut self, segments: Vec<String>) {
        let Some(first) = segments.first() else { return };
        self.full_paths.push(segments.join("::"));
        match first.as_str() {
            "crate" => self.crate_paths.push(segments[1..].to_vec()),
            "super" | "self" => {
                let mut base = self.module.to_vec();
                let mut rest = segments.as_slice();
                while let Some((head, tail)) = rest.split_first() {
                    match head.as_str() {
                        "super" => {
                            base.pop();
                        }
                        "self" => {}
                        _ => break,
                    }
                    rest = tail;
                }
                base.extend(rest.iter().cloned());
                self.crate_paths.push(base);
            }
            _ => {
                self.external.insert(first.clone());
            }
        }
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => {
                let mut s = prefix.clone();
                s.push(n.ident.to_string());
                self.record(s);
            }
            syn::UseTree::Rename(r) => {
                let mut s = prefix.clone();
                s.push(r.ident.to_string());
                self.record(s);
            }
            syn::UseTree::Glob(_) => self.record(prefix.clone()),
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    /// `a::b::c` sequences in a macro's tokens.
    fn tokens(&mut self, tokens: TokenStream) {
        let trees: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < trees.len() {
            match &trees[i] {
                TokenTree::Group(g) => {
                    self.tokens(g.stream());
                    i += 1;
                }
                TokenTree::Ident(first) => {
                    let mut segments = vec![first.to_string()];
                    let mut j = i + 1;
                    // `ident :: ident :: …`: `::` comes as two joint `:` puncts.
                    while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b)), Some(TokenTree::Ident(next))) =
                        (trees.get(j), trees.get(j + 1), trees.get(j + 2))
                    {
                        if a.as_char() != ':' || b.as_char() != ':' {
                            break;
                        }
                        segments.push(next.to_string());
                        j += 3;
                    }
                    if segments.len() > 1 {
                        self.record(segments);
                    }
                    i = j;
                }
                _ => i += 1,
            }
        }
    }
}

impl<'ast> Visit<'ast> for Collector<'_> {
    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if is_cfg_test(&m.attrs) {
            if m.content.is_none() {
                self.test_children.push(m.ident.to_string());
            }
            return;
        }
        syn::visit::visit_item_mod(self, m);
    }

    fn visit_item_fn(&mut self, f: &'ast syn::ItemFn) {
        if !is_cfg_test(&f.attrs) {
            syn::visit::visit_item_fn(self, f);
        }
    }

    fn visit_item_impl(&mut self, i: &'ast syn::ItemImpl) {
        if !is_cfg_test(&i.attrs) {
            syn::visit::visit_item_impl(self, i);
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        if !is_cfg_test(&u.attrs) {
            self.use_tree(&mut Vec::new(), &u.tree);
        }
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        if p.segments.len() > 1 {
            self.record(p.segments.iter().map(|s| s.ident.to_string()).collect());
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

/// Every non-test source file of the crate whose sources are in `src`, by module path.
fn crate_modules(src: &Path) -> BTreeMap<Vec<String>, Module> {
    let mut files = Vec::new();
    collect_files(src, &mut files);
    let mut out = BTreeMap::new();
    let mut test_only: BTreeSet<Vec<String>> = BTreeSet::new();
    for file in files {
        let rel = file.strip_prefix(src).expect("under src");
        if rel.starts_with("bin") {
            continue;
        }
        let mut path: Vec<String> = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
        let last = path.pop().expect("a file name");
        match last.as_str() {
            "lib.rs" | "main.rs" if path.is_empty() => path.push(last.trim_end_matches(".rs").to_string()),
            "mod.rs" => {}
            name => path.push(name.trim_end_matches(".rs").to_string()),
        }
        let text = std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let ast = syn::parse_file(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        // The crate root's paths resolve from the root, whatever the file is called.
        let module: Vec<String> = if path == ["lib"] || path == ["main"] { Vec::new() } else { path.clone() };
        let mut c = Collector {
            module: &module,
            crate_paths: Vec::new(),
            external: BTreeSet::new(),
            full_paths: Vec::new(),
            test_children: Vec::new(),
        };
        c.visit_file(&ast);
        for child in &c.test_children {
            let mut p = module.clone();
            p.push(child.clone());
            test_only.insert(p);
        }
        out.insert(path, Module { file, crate_paths: c.crate_paths, external: c.external, full_paths: c.full_paths });
    }
    // Files of test-only modules, and everything under them.
    out.retain(|path, _| !test_only.iter().any(|t| path.starts_with(t)));
    out
}

fn collect_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).expect("read src dir").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The module a path names: its longest prefix that is a module of the crate.
fn resolve(modules: &BTreeMap<Vec<String>, Module>, path: &[String]) -> Option<Vec<String>> {
    (1..=path.len()).rev().map(|n| path[..n].to_vec()).find(|p| modules.contains_key(p))
}

/// File → files it imports, leaving out a file's own ancestors and descendants.
fn import_graph(modules: &BTreeMap<Vec<String>, Module>) -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let mut graph = BTreeMap::new();
    for (path, m) in modules {
        let deps: BTreeSet<Vec<String>> = m
            .crate_paths
            .iter()
            .filter_map(|p| resolve(modules, p))
            .filter(|d| !d.starts_with(path) && !path.starts_with(d))
            .collect();
        graph.insert(path.clone(), deps);
    }
    graph
}

/// One cycle of the graph, if there is any.
fn find_cycle(graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>) -> Option<Vec<Vec<String>>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Active,
        Done,
    }
    fn dfs(
        n: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        marks: &mut BTreeMap<Vec<String>, Mark>,
        stack: &mut Vec<Vec<String>>,
    ) -> Option<Vec<Vec<String>>> {
        marks.insert(n.clone(), Mark::Active);
        stack.push(n.clone());
        for d in graph.get(n).into_iter().flatten() {
            match marks.get(d).copied().unwrap_or(Mark::New) {
                Mark::Active => {
                    let start = stack.iter().position(|s| s == d).expect("on the stack");
                    let mut cycle = stack[start..].to_vec();
                    cycle.push(d.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = dfs(d, graph, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in graph.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New
            && let Some(c) = dfs(n, graph, &mut marks, &mut Vec::new())
        {
            return Some(c);
        }
    }
    None
}

fn show(path: &[String]) -> String {
    if path.is_empty() { "crate".into() } else { path.join("::") }
}

fn assert_no_cycles(krate: &str) {
    let modules = crate_modules(&root().join(krate).join("src"));
    assert!(!modules.is_empty(), "{krate}: no source files found");
    // Report every cycle: break each one found at its last edge and look again.
    let mut graph = import_graph(&modules);
    let mut cycles = Vec::new();
    while let Some(cycle) = find_cycle(&graph) {
        let names: Vec<String> = cycle.iter().map(|p| show(p)).collect();
        cycles.push(format!("{krate}: import cycle {}", names.join(" → ")));
        let (from, to) = (&cycle[cycle.len() - 2], &cycle[cycle.len() - 1]);
        graph.get_mut(from).expect("a node of the graph").remove(to);
    }
    assert!(cycles.is_empty(), "{}", cycles.join("\n"));
}

#[test]
fn no_import_cycles_in_any_crate() {
    for krate in ["core", "collector", "agent", "cli", "proto", "support", "xtask", "tests"] {
        assert_no_cycles(krate);
    }
}

/// Crates the pure core must not name.
const IMPURE_CRATES: &[&str] =
    &["tokio", "sled", "tonic", "prost", "pikett_proto", "reqwest", "hyper", "axum", "lettre", "libc", "futures"];
/// Paths that read the clock or do I/O.
const IMPURE_PATHS: &[&str] = &[
    "Timestamp::now",
    "Zoned::now",
    "SystemTime::now",
    "Instant::now",
    "std::time::SystemTime",
    "std::time::Instant",
    "std::fs",
    "std::net",
    "std::process",
    "std::env",
    "std::thread",
];

/// Problems of a module that should be pure, or none.
fn impurities(m: &Module) -> Vec<String> {
    let mut out: Vec<String> =
        m.external.iter().filter(|c| IMPURE_CRATES.contains(&c.as_str())).map(|c| format!("names `{c}`")).collect();
    for p in &m.full_paths {
        if IMPURE_PATHS.iter().any(|bad| p.contains(bad)) {
            out.push(format!("uses `{p}`"));
        }
    }
    out
}

#[test]
fn the_core_is_pure() {
    let modules = crate_modules(&root().join("core/src"));
    assert!(modules.contains_key(&vec!["faults".to_string(), "engine".to_string()]), "core layout changed?");
    let mut problems = Vec::new();
    for m in modules.values() {
        for p in impurities(m) {
            problems.push(format!("{}: {p}", m.file.display()));
        }
    }
    assert!(
        problems.is_empty(),
        "pikett-core must stay pure (data and time in, decisions out):\n{}",
        problems.join("\n")
    );
    let manifest = std::fs::read_to_string(root().join("core/Cargo.toml")).expect("core/Cargo.toml");
    let deps = manifest.split("[dependencies]").nth(1).and_then(|s| s.split("\n[").next()).unwrap_or_default();
    for c in IMPURE_CRATES {
        let name = c.replace('_', "-");
        assert!(
            !deps
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{name} "))
                    || l.trim_start().starts_with(&format!("{name}."))),
            "core/Cargo.toml depends on {name}"
        );
    }
}

#[test]
fn the_purity_check_catches_a_clock_read_and_a_runtime() {
    // The check itself must be able to fail: feed it a module that breaks both rules.
    let src = "use tokio::sync::Mutex;\nfn f() { let _ = jiff::Timestamp::now(); tracing::info!(x = ?std::time::Instant::now()); }\n";
    let ast = syn::parse_file(src).unwrap();
    let module = Vec::new();
    let mut c = Collector {
        module: &module,
        crate_paths: Vec::new(),
        external: BTreeSet::new(),
        full_paths: Vec::new(),
        test_children: Vec::new(),
    };
    c.visit_file(&ast);
    let m = Module { file: "x.rs".into(), crate_paths: c.crate_paths, external: c.external, full_paths: c.full_paths };
    let problems = impurities(&m);
    assert!(problems.iter().any(|p| p.contains("tokio")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("Timestamp::now")), "{problems:?}");
    assert!(
        problems.iter().any(|p| p.contains("Instant::now")),
        "a clock read inside a macro was missed: {problems:?}"
    );
}

#[test]
fn the_cycle_check_finds_a_cycle() {
    let p = |s: &str| vec![s.to_string()];
    let graph: BTreeMap<Vec<String>, BTreeSet<Vec<String>>> = [
        (p("a"), [p("b")].into_iter().collect()),
        (p("b"), [p("c")].into_iter().collect()),
        (p("c"), [p("a")].into_iter().collect()),
        (p("d"), BTreeSet::new()),
    ]
    .into_iter()
    .collect();
    let cycle = find_cycle(&graph).expect("a → b → c → a");
    assert_eq!(cycle.first(), cycle.last());
    assert_eq!(cycle.len(), 4);
}

/// The collector's layers, lowest first. A module may import its own layer and lower ones.
const COLLECTOR_LAYERS: &[(&str, u8)] = &[
    ("store", 1),
    ("notify", 2),
    ("config", 3),
    ("services", 4),
    ("api", 5),
    ("remote_write", 5),
    ("server", 6),
    ("offline_sla", 6),
    ("lib", 7),
    ("main", 7),
];

fn layer_of(path: &[String]) -> (String, u8) {
    let top = path.first().map_or("lib", String::as_str);
    let rank = COLLECTOR_LAYERS.iter().find(|(name, _)| *name == top).map(|(_, r)| *r).unwrap_or_else(|| {
        panic!("collector module `{top}` is in no layer: add it to COLLECTOR_LAYERS and ARCHITECTURE.md")
    });
    (top.to_string(), rank)
}

#[test]
fn collector_layers_import_only_downwards() {
    let modules = crate_modules(&root().join("collector/src"));
    let graph = import_graph(&modules);
    let mut problems = Vec::new();
    for (from, deps) in &graph {
        let (from_layer, from_rank) = layer_of(from);
        for to in deps {
            let (to_layer, to_rank) = layer_of(to);
            if to_rank > from_rank {
                problems.push(format!(
                    "{} ({from_layer}) imports {} ({to_layer}, a higher layer)",
                    show(from),
                    show(to)
                ));
            }
        }
    }
    // Which external crates each layer may name.
    let forbidden: &[(&str, &[&str])] = &[
        ("store", &["tonic", "axum", "lettre", "reqwest"]),
        ("notify", &["sled", "tokio_postgres", "tonic", "axum"]),
        ("config", &["sled", "tokio_postgres", "tonic", "axum", "tokio"]),
        ("services", &["sled", "tokio_postgres", "tonic", "axum"]),
        ("api", &["sled", "tokio_postgres"]),
        ("remote_write", &["sled", "tokio_postgres", "tonic", "axum"]),
    ];
    for (path, m) in &modules {
        let (layer, _) = layer_of(path);
        if let Some((_, crates)) = forbidden.iter().find(|(l, _)| *l == layer) {
            for c in crates.iter().filter(|c| m.external.contains(**c)) {
                problems.push(format!("{} ({layer}) names `{c}`", m.file.display()));
            }
        }
    }
    assert!(problems.is_empty(), "collector layering broken:\n{}", problems.join("\n"));
}

#[test]
fn the_cli_links_no_collector_or_storage() {
    let manifest = std::fs::read_to_string(root().join("cli/Cargo.toml")).expect("cli/Cargo.toml");
    for forbidden in ["pikett-collector", "sled", "tokio-postgres", "axum"] {
        assert!(!manifest.contains(forbidden), "cli/Cargo.toml names {forbidden}: the CLI is a gRPC client only");
    }
    let modules = crate_modules(&root().join("cli/src"));
    for m in modules.values() {
        assert!(!m.external.contains("pikett_collector"), "{} names pikett_collector", m.file.display());
    }
}

#[test]
fn no_openssl_or_aws_lc_is_built() {
    // TLS everywhere (agents, the CLI, reqwest, PostgreSQL) is rustls with ring: one crypto
    // library, no system OpenSSL to match on the hosts, no C++ toolchain for aws-lc.
    let lock = std::fs::read_to_string(root().join("Cargo.lock")).expect("Cargo.lock");
    for forbidden in ["openssl", "openssl-sys", "aws-lc-rs", "aws-lc-sys", "native-tls"] {
        assert!(
            !lock.lines().any(|l| l == format!("name = \"{forbidden}\"")),
            "Cargo.lock has the package {forbidden}: TLS must stay rustls with ring"
        );
    }
}
