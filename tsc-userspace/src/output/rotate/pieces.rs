//! Where pieces go: `FILE.0001`, `FILE.0002`, ... for a file,
//! `DIR/0001/`, `DIR/0002/`, ... for a recording directory. Numbers have
//! at least four digits and only grow; a new run continues after the
//! highest piece already there, and those count towards the pieces kept,
//! so a restarted session stays within the same bound.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// Digits a piece number has at least.
const DIGITS: usize = 4;

/// The pieces of one rotated output.
#[derive(Clone, Debug)]
pub struct Pieces {
    base: PathBuf,
    kind: PieceKind,
}

/// Whether pieces are files beside `base` or directories inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PieceKind {
    /// `base.NNNN`.
    File,
    /// `base/NNNN/`.
    Dir,
}

impl Pieces {
    /// The pieces of `base`.
    pub fn new(base: impl Into<PathBuf>, kind: PieceKind) -> Self {
        Self {
            base: base.into(),
            kind,
        }
    }

    /// What is rotated: `FILE` or `DIR`.
    pub fn base(&self) -> &Path {
        &self.base
    }

    /// Piece `n`'s path.
    pub fn path(&self, n: u64) -> PathBuf {
        match self.kind {
            PieceKind::File => {
                let mut name = self.base.file_name().unwrap_or_default().to_os_string();
                name.push(format!(".{n:0DIGITS$}"));
                self.base.with_file_name(name)
            }
            PieceKind::Dir => self.base.join(format!("{n:0DIGITS$}")),
        }
    }

    /// The numbers of the pieces on disk, ascending (none when the
    /// directory they would be in does not exist).
    pub fn existing(&self) -> io::Result<Vec<u64>> {
        let (dir, prefix) = match self.kind {
            PieceKind::File => {
                let dir = match self.base.parent() {
                    Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
                    _ => PathBuf::from("."),
                };
                let mut prefix = self.base.file_name().unwrap_or_default().to_os_string();
                prefix.push(".");
                (dir, prefix.to_string_lossy().into_owned())
            }
            PieceKind::Dir => (self.base.clone(), String::new()),
        };
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e),
        };
        let mut found = Vec::new();
        for entry in entries {
            let name = entry?.file_name();
            let Some(num) = name.to_str().and_then(|n| n.strip_prefix(&prefix)) else {
                continue;
            };
            if let Some(n) = piece_number(num) {
                found.push(n);
            }
        }
        found.sort_unstable();
        Ok(found)
    }

    /// The number the next piece gets: one past the highest on disk.
    pub fn next_number(&self) -> io::Result<u64> {
        Ok(self.existing()?.last().map_or(1, |n| n + 1))
    }

    /// Deletes piece `n` (a file, or a directory and all it holds).
    pub fn delete(&self, n: u64) -> io::Result<()> {
        let path = self.path(n);
        let result = match self.kind {
            PieceKind::File => fs::remove_file(&path),
            PieceKind::Dir => fs::remove_dir_all(&path),
        };
        match result {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }
}

/// `NNNN` (at least four digits, nothing else) as a number.
pub fn piece_number(name: &str) -> Option<u64> {
    (name.len() >= DIGITS && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_are_numbered_files_or_directories() {
        let f = Pieces::new("/x/out.json", PieceKind::File);
        assert_eq!(f.path(1), PathBuf::from("/x/out.json.0001"));
        assert_eq!(f.path(12345), PathBuf::from("/x/out.json.12345"));
        let d = Pieces::new("/x/rec", PieceKind::Dir);
        assert_eq!(d.path(2), PathBuf::from("/x/rec/0002"));
        assert_eq!(
            Pieces::new("out", PieceKind::File).path(3),
            PathBuf::from("out.0003")
        );
    }

    #[test]
    fn only_pieces_count_and_numbering_continues_after_the_highest() {
        let tmp = tempfile::tempdir().unwrap();
        let base = tmp.path().join("t.txt");
        for name in [
            "t.txt",
            "t.txt.0002",
            "t.txt.0010",
            "t.txt.12",
            "t.txt.00x1",
            "u.txt.0001",
        ] {
            fs::write(tmp.path().join(name), "").unwrap();
        }
        let f = Pieces::new(&base, PieceKind::File);
        assert_eq!(f.existing().unwrap(), vec![2, 10]);
        assert_eq!(f.next_number().unwrap(), 11);
        f.delete(2).unwrap();
        f.delete(3).unwrap(); // not there: fine
        assert_eq!(f.existing().unwrap(), vec![10]);

        let rec = tmp.path().join("rec");
        let d = Pieces::new(&rec, PieceKind::Dir);
        assert_eq!(d.next_number().unwrap(), 1, "no directory yet");
        fs::create_dir_all(rec.join("0003/spill")).unwrap();
        fs::write(rec.join("0003/spill/x"), "x").unwrap();
        fs::create_dir_all(rec.join("other")).unwrap();
        assert_eq!(d.existing().unwrap(), vec![3]);
        d.delete(3).unwrap();
        assert!(!rec.join("0003").exists());
    }
}
