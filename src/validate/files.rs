//! Which files `llamaduo validate` reads: the files named on its command line, and the
//! `*.yaml` / `*.yml` files under the directories named there, searched depth-first.
//!
//! Each real directory is searched once and each real file read once, however many paths
//! lead to them: paths are compared after `canonicalize`, which resolves symbolic links. A
//! link to a parent directory once made the walk go round until the path grew too long,
//! checking the same manifest 41 times; now the link is skipped and the skip reported.

use std::collections::HashSet;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// The files to read, in walk order, and the paths skipped on the way.
#[derive(Debug, Default)]
pub struct Manifests {
    /// Files to read: YAML files under the directories, and every file named directly (a
    /// path that does not exist is kept too, so reading it reports it).
    pub files: Vec<PathBuf>,
    /// Paths that led to a directory or file already taken.
    pub skipped: Vec<Skipped>,
}

/// A path not followed because it leads somewhere already taken.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Skipped {
    /// The path as the walk met it (typically a symbolic link).
    pub path: PathBuf,
    /// Where it leads.
    pub target: PathBuf,
    /// Why that is a reason to skip it.
    pub reason: SkipReason,
}

/// Why a path was skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// It leads to a directory the walk is inside of: following it would never end.
    Loop,
    /// It leads to a directory already searched.
    DirectorySearched,
    /// It leads to a file already taken.
    FileTaken,
}

impl fmt::Display for Skipped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (path, target) = (self.path.display(), self.target.display());
        match self.reason {
            SkipReason::Loop => write!(
                f,
                "skipping {path}: it leads back to {target}, a directory it is inside of (a loop of symbolic links)"
            ),
            SkipReason::DirectorySearched => {
                write!(f, "skipping {path}: it is {target}, already searched")
            }
            SkipReason::FileTaken => write!(f, "skipping {path}: it is {target}, already read"),
        }
    }
}

/// A directory that could not be listed or resolved.
#[derive(Debug, thiserror::Error)]
#[error("reading directory {}: {source}", path.display())]
pub struct WalkError {
    /// The directory.
    pub path: PathBuf,
    /// What the system said.
    #[source]
    pub source: io::Error,
}

/// The manifests under `paths` (see the module docs).
pub fn manifest_files(paths: &[PathBuf]) -> Result<Manifests, WalkError> {
    let mut walk = Walk::default();
    for path in paths {
        walk.visit(path, true)?;
    }
    Ok(walk.out)
}

#[derive(Default)]
struct Walk {
    /// Canonical directories searched or being searched.
    dirs: HashSet<PathBuf>,
    /// Canonical directories the walk is inside of now, to tell a loop from a second path.
    inside: Vec<PathBuf>,
    /// Canonical files taken.
    files: HashSet<PathBuf>,
    out: Manifests,
}

impl Walk {
    /// `named`: the path was given on the command line (a file is then read whatever its
    /// extension).
    fn visit(&mut self, path: &Path, named: bool) -> Result<(), WalkError> {
        if path.is_dir() {
            return self.search(path);
        }
        if !(named || is_yaml(path)) {
            return Ok(());
        }
        match std::fs::canonicalize(path) {
            Ok(real) if self.files.contains(&real) => self.skip(path, real, SkipReason::FileTaken),
            Ok(real) => {
                self.files.insert(real);
                self.out.files.push(path.to_path_buf());
            }
            // Missing or unreadable: reading it names the problem.
            Err(_) => self.out.files.push(path.to_path_buf()),
        }
        Ok(())
    }

    fn search(&mut self, dir: &Path) -> Result<(), WalkError> {
        let error = |source| WalkError {
            path: dir.to_path_buf(),
            source,
        };
        let real = std::fs::canonicalize(dir).map_err(error)?;
        if self.inside.contains(&real) {
            self.skip(dir, real, SkipReason::Loop);
            return Ok(());
        }
        if !self.dirs.insert(real.clone()) {
            self.skip(dir, real, SkipReason::DirectorySearched);
            return Ok(());
        }
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
            .and_then(|list| list.map(|e| e.map(|e| e.path())).collect())
            .map_err(error)?;
        entries.sort();
        self.inside.push(real);
        let result = entries.iter().try_for_each(|p| self.visit(p, false));
        self.inside.pop();
        result
    }

    fn skip(&mut self, path: &Path, target: PathBuf, reason: SkipReason) {
        self.out.skipped.push(Skipped {
            path: path.to_path_buf(),
            target,
            reason,
        });
    }
}

fn is_yaml(path: &Path) -> bool {
    path.extension().is_some_and(|x| x == "yaml" || x == "yml")
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("tmp");
        std::fs::write(dir.path().join("a.yaml"), "a").expect("a");
        std::fs::write(dir.path().join("notes.txt"), "not yaml").expect("txt");
        std::fs::create_dir(dir.path().join("sub")).expect("sub");
        std::fs::write(dir.path().join("sub/b.yml"), "b").expect("b");
        dir
    }

    #[test]
    fn a_link_to_a_parent_is_skipped_once_and_each_manifest_taken_once() {
        let dir = tree();
        symlink("..", dir.path().join("sub/up")).expect("link");
        let found = manifest_files(&[dir.path().to_path_buf()]).expect("walks");
        assert_eq!(
            found.files,
            [dir.path().join("a.yaml"), dir.path().join("sub/b.yml")]
        );
        assert_eq!(found.skipped.len(), 1, "{:?}", found.skipped);
        let skip = &found.skipped[0];
        assert_eq!(skip.path, dir.path().join("sub/up"));
        assert_eq!(skip.reason, SkipReason::Loop);
        assert_eq!(
            skip.target,
            std::fs::canonicalize(dir.path()).expect("real")
        );
        let line = skip.to_string();
        assert!(line.contains("sub/up") && line.contains("loop"), "{line}");
    }

    #[test]
    fn a_second_path_to_a_directory_or_file_is_skipped_not_read_twice() {
        let dir = tree();
        symlink("sub", dir.path().join("sub-again")).expect("dir link");
        symlink("a.yaml", dir.path().join("z.yaml")).expect("file link");
        let root = dir.path().to_path_buf();
        // The directory named twice on the command line, and a file inside it named too.
        let found =
            manifest_files(&[root.clone(), root.join("a.yaml"), root.clone()]).expect("walks");
        assert_eq!(found.files, [root.join("a.yaml"), root.join("sub/b.yml")]);
        let reasons: Vec<(PathBuf, SkipReason)> = found
            .skipped
            .iter()
            .map(|s| (s.path.clone(), s.reason))
            .collect();
        assert_eq!(
            reasons,
            [
                (root.join("sub-again"), SkipReason::DirectorySearched),
                (root.join("z.yaml"), SkipReason::FileTaken),
                (root.join("a.yaml"), SkipReason::FileTaken),
                (root.clone(), SkipReason::DirectorySearched),
            ]
        );
    }

    #[test]
    fn files_named_directly_are_read_whatever_their_name_and_missing_ones_kept() {
        let dir = tree();
        let txt = dir.path().join("notes.txt");
        let missing = dir.path().join("missing.yaml");
        let found = manifest_files(&[txt.clone(), missing.clone()]).expect("walks");
        assert_eq!(found.files, [txt, missing]);
        assert!(found.skipped.is_empty());
    }
}
