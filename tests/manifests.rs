//! Every example passes `llamaduo validate`, and every manifest of the invalid corpus
//! (tests/invalid/*.yaml, each naming the field it breaks in an `# expect:` header) fails with
//! a problem at exactly that field path.

use std::path::{Path, PathBuf};

use llamaduo::validate::{Target, validate_yaml};

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("directory exists") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            out.extend(yaml_files(&path));
        } else if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_example_is_valid() {
    let files = yaml_files(&root().join("examples"));
    assert!(!files.is_empty());
    let mut checked = 0;
    for file in files {
        // examples/quickstart and examples/smollm2 run with `llamaduo run`, where storage
        // defaults to the work dir.
        let target = if file
            .components()
            .any(|c| c.as_os_str() == "quickstart" || c.as_os_str() == "smollm2")
        {
            Target::Local
        } else {
            Target::Cluster
        };
        let text = std::fs::read_to_string(&file).expect("readable");
        for report in validate_yaml(&text, target).expect("YAML parses") {
            if report.checked {
                checked += 1;
                assert!(
                    report.problems.is_empty(),
                    "{}: {:?}",
                    file.display(),
                    report.problems
                );
            }
        }
    }
    assert!(
        checked >= 2,
        "only {checked} migrations found under examples/"
    );
}

#[test]
fn every_invalid_manifest_fails_at_its_field() {
    let files = yaml_files(&root().join("tests/invalid"));
    assert!(files.len() >= 10, "the corpus shrank");
    for file in files {
        let text = std::fs::read_to_string(&file).expect("readable");
        let expected = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} lacks an `# expect: FIELD` header", file.display()))
            .trim()
            .to_string();
        let problems: Vec<_> = validate_yaml(&text, Target::Cluster)
            .expect("YAML parses")
            .into_iter()
            .flat_map(|r| r.problems)
            .collect();
        assert!(
            problems.iter().any(|p| p.path == expected),
            "{}: expected a problem at {expected}, got {problems:?}",
            file.display()
        );
    }
}
