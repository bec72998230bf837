//! Output paths checked before long work: a run that fails at its last step, after hours of
//! training, for a mistyped `--json`, loses those hours.

use std::path::Path;

use topk_sae::{Error, Result};

/// Checks that the file `path` (given as `--flag`) can be written: its folder exists, and it is
/// not a folder itself.
#[allow(dead_code)] // used by some of the examples that include this file
pub fn check_output_file(flag: &'static str, path: &Path) -> Result<()> {
    if path.is_dir() {
        return Err(Error::OutputInUse {
            path: path.to_owned(),
            reason: format!("is a folder; --{flag} takes a file name"),
        });
    }
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if parent.is_dir() {
        return Ok(());
    }
    Err(Error::Io {
        action: "write",
        path: path.to_owned(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("folder {} does not exist (--{flag})", parent.display()),
        ),
    })
}

/// Checks that the report file `path` is new, or one an earlier run wrote: a file there that
/// does not hold `marker` (text every such report holds) is a user's, and is not replaced.
#[allow(dead_code)] // used by some of the examples that include this file
pub fn check_report_file(path: &Path, marker: &str) -> Result<()> {
    if path.is_dir() {
        return Err(Error::OutputInUse {
            path: path.to_owned(),
            reason: "is a folder, where the report writes a file".into(),
        });
    }
    match std::fs::read(path) {
        Ok(bytes) if !String::from_utf8_lossy(&bytes).contains(marker) => Err(Error::OutputInUse {
            path: path.to_owned(),
            reason: "is not a report this example wrote; give --out a new or empty folder".into(),
        }),
        _ => Ok(()),
    }
}
