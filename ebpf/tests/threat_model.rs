//! Every exemption the programs grant cites the section of
//! docs/threat-model.md that says why it cannot be forged (`[Section]` in a
//! comment). A citation of a section that does not exist (renamed, removed,
//! mistyped) points a reader nowhere: this keeps the two in step.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// The headings of docs/threat-model.md (`## X`, `### X`).
fn sections() -> BTreeSet<String> {
    let doc = std::fs::read_to_string(root().join("docs/threat-model.md")).unwrap();
    doc.lines()
        .filter_map(|l| l.strip_prefix("### ").or_else(|| l.strip_prefix("## ")))
        .map(|s| s.trim().to_string())
        .collect()
}

/// `[Name]` and `[Name: detail]` in the text: letters, spaces, `:` and `-`
/// only, starting with a capital (so array sizes such as `[ETH_ALEN]` and
/// indices such as `[i]` are not taken for citations).
fn citations(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find('[') {
        rest = &rest[i + 1..];
        let Some(j) = rest.find(']') else { break };
        let c = &rest[..j];
        let cited = c.len() > 1
            && c.starts_with(|ch: char| ch.is_ascii_uppercase())
            && c.chars()
                .all(|ch| ch.is_ascii_alphabetic() || " :-".contains(ch));
        if cited {
            out.push(c.to_string());
        }
    }
    out
}

fn c_sources() -> Vec<(String, String)> {
    let mut files = Vec::new();
    for dir in ["ebpf/programs", "ebpf/include"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if matches!(p.extension().and_then(|x| x.to_str()), Some("c" | "h")) {
                let text = std::fs::read_to_string(&p).unwrap();
                files.push((p.display().to_string(), text));
            }
        }
    }
    files
}

#[test]
fn every_citation_in_the_programs_names_a_section_of_the_threat_model() {
    let sections = sections();
    let mut cited = BTreeSet::new();
    for (file, text) in c_sources() {
        for c in citations(&text) {
            assert!(
                sections.contains(&c),
                "{file} cites [{c}], which docs/threat-model.md has no section for (sections: {sections:?})"
            );
            cited.insert(c);
        }
    }
    // Each exemption the programs grant, and each check standing against a
    // forged source, is cited where it is made.
    for must in [
        "Exemptions: self",
        "Exemptions: node",
        "Uplink anti-spoof",
        "DSR",
        "Health checks",
        "Pods",
    ] {
        assert!(
            cited.contains(must),
            "no program cites [{must}]; cited: {cited:?}"
        );
    }
}

#[test]
fn citations_are_told_from_array_sizes() {
    assert_eq!(
        citations("a[ETH_ALEN]; b[0]; c[N]; /* [Exemptions: node] and [DSR] */ x[i]"),
        vec!["Exemptions: node".to_string(), "DSR".to_string()]
    );
}
