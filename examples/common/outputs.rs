//! Output paths checked before long work: a run that fails at its last step, after hours of
//! training, for a mistyped `--json`, loses those hours.

use std::path::Path;

use topk_sae::{Error, Result};

/// Checks that the file `path` (given as `--flag`) can be written: its folder exists, and it is
/// not a folder itself.
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
