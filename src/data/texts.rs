//! The texts behind embedding rows: a [`Document`] per row (a title to show and the text that
//! labels features), read from JSON lines or made for a synthetic set.

use std::io::BufRead;
use std::path::Path;

use crate::error::{Error, Result};

/// The fields of a JSON line that give a document its title and text, in the order they are
/// looked for.
pub const DOCUMENT_FIELDS: [&str; 3] = ["title", "text", "abstract"];

/// The text behind one embedding row.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Document {
    /// What a report shows for the row.
    pub title: String,
    /// The words that label features (title and body).
    pub text: String,
}

impl Document {
    /// A document of `title` with no text beyond it.
    pub fn titled(title: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            text: String::new(),
        }
    }
}

/// Documents read from a JSON-lines file by [`read_documents`].
#[derive(Debug, Clone, Default)]
pub struct Documents {
    /// One per non-empty line, in file order.
    pub documents: Vec<Document>,
    /// Lines that hold none of [`DOCUMENT_FIELDS`] (their documents are empty): the line number
    /// (from 1) and the keys the line holds, for a warning.
    pub unlabeled: Vec<(usize, Vec<String>)>,
}

/// Reads one document per non-empty line of the JSON-lines file `path`: the title from `title`
/// (or the first 100 characters of the body), the body from `text` or else `abstract`, and as
/// its text `"{title}. {body}"`.
///
/// # Errors
/// [`Error::Io`] when the file cannot be read; [`Error::Format`] for a line that is not JSON,
/// or when no line holds any of [`DOCUMENT_FIELDS`] (the wrong file, most likely).
pub fn read_documents(path: impl AsRef<Path>) -> Result<Documents> {
    let path = path.as_ref();
    let file = std::fs::File::open(path).map_err(|source| Error::Io {
        action: "open",
        path: path.to_path_buf(),
        source,
    })?;
    let mut read = Documents::default();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(|source| Error::Io {
            action: "read",
            path: path.to_path_buf(),
            source,
        })?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            reason: format!("line {}: {e}", i + 1),
        })?;
        if DOCUMENT_FIELDS.iter().all(|k| v.get(k).is_none()) {
            let keys = v
                .as_object()
                .map(|o| o.keys().cloned().collect())
                .unwrap_or_default();
            read.unlabeled.push((i + 1, keys));
        }
        let get = |k: &str| {
            v.get(k)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let body = [get("text"), get("abstract")]
            .into_iter()
            .find(|s| !s.is_empty())
            .unwrap_or_default();
        let title = get("title");
        let title = if title.is_empty() {
            body.chars().take(100).collect()
        } else {
            title
        };
        read.documents.push(Document {
            text: format!("{title}. {body}"),
            title,
        });
    }
    if let Some((line, keys)) = read.unlabeled.first()
        && read.unlabeled.len() == read.documents.len()
    {
        return Err(Error::Format {
            path: path.to_path_buf(),
            reason: format!(
                "no line holds any of the fields {DOCUMENT_FIELDS:?} (line {line} holds {keys:?})"
            ),
        });
    }
    Ok(read)
}

/// Made-up texts for planted directions: three syllable words per direction, and a title
/// naming the directions a row mixes (`active`: each row's directions, `per_row` a row).
pub(crate) fn planted_documents(active: &[u32], per_row: usize) -> Vec<Document> {
    const SYL: [&str; 12] = [
        "ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "qua", "dex",
    ];
    let word = |d: u32, w: u32| {
        let n = d * 3 + w;
        format!(
            "{}{}{}",
            SYL[(n % 12) as usize],
            SYL[((n / 12) % 12) as usize],
            SYL[((n / 144) % 12) as usize]
        )
    };
    active
        .chunks(per_row.max(1))
        .enumerate()
        .map(|(i, dirs)| {
            let words: Vec<String> = dirs
                .iter()
                .flat_map(|&d| (0..3).map(move |w| word(d, w)))
                .collect();
            Document {
                title: format!("doc {i}: topics {dirs:?}"),
                text: words.join(" "),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(lines: &str) -> tempfile::NamedTempFile {
        use std::io::Write;
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(lines.as_bytes()).unwrap();
        f
    }

    #[test]
    fn reads_titles_and_bodies_and_names_unlabeled_lines() {
        let f = write(
            "{\"title\": \"Galaxy clusters\", \"abstract\": \"We map them.\"}\n\n\
             {\"text\": \"A body with no title\"}\n{\"id\": 7}\n",
        );
        let read = read_documents(f.path()).unwrap();
        assert_eq!(
            read.documents,
            vec![
                Document {
                    title: "Galaxy clusters".into(),
                    text: "Galaxy clusters. We map them.".into()
                },
                Document {
                    title: "A body with no title".into(),
                    text: "A body with no title. A body with no title".into()
                },
                Document {
                    title: String::new(),
                    text: ". ".into()
                },
            ]
        );
        assert_eq!(read.unlabeled, vec![(4, vec!["id".to_owned()])]);
    }

    #[test]
    fn refuses_a_file_without_any_text_field_and_a_line_that_is_not_json() {
        let f = write("{\"id\": 1}\n{\"id\": 2}\n");
        let e = read_documents(f.path()).unwrap_err().to_string();
        assert!(e.contains("no line holds any of the fields"), "{e}");
        let f = write("{\"title\": \"ok\"}\nnot json\n");
        let e = read_documents(f.path()).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn planted_documents_name_each_rows_directions() {
        let docs = planted_documents(&[0, 1, 2, 0], 2);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].title, "doc 0: topics [0, 1]");
        assert_eq!(docs[1].title, "doc 1: topics [2, 0]");
        // Three words per direction; a direction's words are the same in every row.
        assert_eq!(docs[0].text.split(' ').count(), 6);
        assert_eq!(
            docs[0].text.split(' ').take(3).collect::<Vec<_>>(),
            docs[1].text.split(' ').skip(3).collect::<Vec<_>>()
        );
    }
}
