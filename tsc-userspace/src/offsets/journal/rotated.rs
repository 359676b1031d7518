//! The names of a journal's files: `PATH` (being written), `PATH.1`
//! (the one before), ... `PATH.N-1` (the oldest kept).

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use super::JournalError;

/// `PATH.n` (`PATH` for 0).
pub fn nth(path: &Path, n: u32) -> PathBuf {
    if n == 0 {
        return path.to_path_buf();
    }
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{n}"));
    PathBuf::from(name)
}

/// The journal's files that exist, oldest first, ending with `PATH`.
/// Every `PATH.n` in the directory counts, so a journal written with a
/// larger `--journal-keep` is read whole.
pub fn oldest_first(path: &Path) -> Result<Vec<PathBuf>, JournalError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let Some(base) = path.file_name().and_then(|n| n.to_str()) else {
        return Ok(vec![path.to_path_buf()]);
    };
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(JournalError::Io {
                path: dir.to_path_buf(),
                source,
            });
        }
    };
    let prefix = format!("{base}.");
    let mut numbered: Vec<u32> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let n = name.to_str()?.strip_prefix(&prefix)?;
            // Canonical numbers only: "1", not "01" or "+1".
            let parsed: u32 = n.parse().ok()?;
            (parsed > 0 && parsed.to_string() == n).then_some(parsed)
        })
        .collect();
    numbered.sort_unstable_by(|a, b| b.cmp(a));
    let mut files: Vec<PathBuf> = numbered.into_iter().map(|n| nth(path, n)).collect();
    files.push(path.to_path_buf());
    Ok(files)
}
