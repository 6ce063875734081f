//! Bulk import of Codex auth.json documents: request limits, parsing, duplicate detection.
//!
//! Problems with the whole request (nothing to import, too big) reject it before anything is
//! written. Problems with one item fail that item only, with a message naming what is wrong;
//! the other items are imported. Messages never echo token values.

use std::collections::HashMap;

use poolgate_core::authjson::{ImportedCodexAuth, parse_document};
use poolgate_proto::v1 as pb;

use crate::error::ApiError;

pub const MAX_DOCUMENT_BYTES: usize = 8 * 1024 * 1024;
pub const MAX_REQUEST_BYTES: usize = 32 * 1024 * 1024;
pub const MAX_ITEMS: usize = 10_000;

pub const OUTCOME_CREATED: &str = "created";
pub const OUTCOME_UPDATED: &str = "updated";
pub const OUTCOME_FAILED: &str = "failed";

/// The parsed request: one result slot per item, in request order. Items still to be stored
/// carry their slot number.
#[derive(Debug)]
pub(crate) struct ImportPlan {
    pub results: Vec<pb::ImportItemResult>,
    pub to_store: Vec<(usize, ImportedCodexAuth)>,
}

fn position(document: usize, index: usize) -> (u32, u32) {
    // Bounded by the request limits, so these never saturate in practice.
    (
        u32::try_from(document).unwrap_or(u32::MAX),
        u32::try_from(index).unwrap_or(u32::MAX),
    )
}

pub(crate) fn failed(
    document: u32,
    index: u32,
    name: String,
    error: String,
) -> pb::ImportItemResult {
    pb::ImportItemResult {
        document,
        index,
        outcome: OUTCOME_FAILED.to_string(),
        account_id: String::new(),
        name,
        error,
    }
}

/// Checks the request limits and parses every document.
pub(crate) fn plan(documents: &[String]) -> Result<ImportPlan, ApiError> {
    if documents.is_empty() {
        return Err(ApiError::invalid(
            "no documents: pass at least one Codex auth.json document (an object, a JSON array \
             or NDJSON)",
        ));
    }
    let mut total_bytes = 0usize;
    for (d, doc) in documents.iter().enumerate() {
        if doc.len() > MAX_DOCUMENT_BYTES {
            return Err(ApiError::invalid(format!(
                "document {d} is {} bytes; a document may be at most 8 MiB ({MAX_DOCUMENT_BYTES} \
                 bytes): split it into several documents",
                doc.len()
            )));
        }
        total_bytes = total_bytes.saturating_add(doc.len());
    }
    if total_bytes > MAX_REQUEST_BYTES {
        return Err(ApiError::invalid(format!(
            "the documents total {total_bytes} bytes; one import may carry at most 32 MiB \
             ({MAX_REQUEST_BYTES} bytes): split it into several imports"
        )));
    }

    let parsed: Vec<_> = documents.iter().map(|d| parse_document(d)).collect();
    let items: usize = parsed.iter().map(Vec::len).sum();
    if items > MAX_ITEMS {
        return Err(ApiError::invalid(format!(
            "the request holds {items} items; one import may hold at most {MAX_ITEMS}: split it \
             into several imports"
        )));
    }

    let mut results = Vec::with_capacity(items);
    let mut to_store = Vec::with_capacity(items);
    // Identity key -> (document, index) of its first occurrence.
    let mut seen: HashMap<String, (u32, u32)> = HashMap::with_capacity(items);
    for (d, doc_items) in parsed.into_iter().enumerate() {
        for (i, item) in doc_items.into_iter().enumerate() {
            let (document, index) = position(d, i);
            let slot = results.len();
            match item {
                Err(e) => results.push(failed(document, index, String::new(), e.to_string())),
                Ok(auth) => {
                    if let Some((fd, fi)) = seen.get(&auth.identity.key()) {
                        results.push(failed(
                            document,
                            index,
                            auth.label.clone(),
                            format!(
                                "duplicate of document {fd} item {fi}: same subject and \
                                 chatgpt_account_id"
                            ),
                        ));
                        continue;
                    }
                    seen.insert(auth.identity.key(), (document, index));
                    // Filled in once the store has answered.
                    results.push(pb::ImportItemResult {
                        document,
                        index,
                        name: auth.label.clone(),
                        ..Default::default()
                    });
                    to_store.push((slot, auth));
                }
            }
        }
    }
    Ok(ImportPlan { results, to_store })
}

#[cfg(test)]
mod tests {
    use super::*;
    use poolgate_core::jwt::unsigned;
    use serde_json::json;

    fn doc(sub: &str, ws: &str) -> String {
        let id = unsigned(
            &json!({"sub": sub, "https://api.openai.com/auth": {"chatgpt_account_id": ws}}),
        );
        json!({"tokens": {"id_token": id, "access_token": "secret-at", "refresh_token": "secret-rt"}})
            .to_string()
    }

    #[test]
    fn whole_request_limits() {
        assert!(plan(&[]).is_err());
        let big = " ".repeat(MAX_DOCUMENT_BYTES + 1);
        let e = plan(&[big]).unwrap_err().into_status("ImportAccounts");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("document 0 is"), "{}", e.message());
        let five = vec![" ".repeat(MAX_DOCUMENT_BYTES - 1); 5];
        let e = plan(&five).unwrap_err().into_status("ImportAccounts");
        assert!(e.message().contains("32 MiB"), "{}", e.message());
        let many = "{}\n".repeat(MAX_ITEMS + 1);
        let e = plan(&[many]).unwrap_err().into_status("ImportAccounts");
        assert!(e.message().contains("10001 items"), "{}", e.message());
    }

    #[test]
    fn per_item_failures_and_duplicates() {
        let d0 = format!("{}\n{}\n", doc("u1", "ws"), doc("u2", "ws"));
        let d1 = format!("[{}, {{\"tokens\": {{}}}}]", doc("u1", "ws"));
        let d2 = "{not json".to_string();
        let p = plan(&[d0, d1, d2]).unwrap();
        assert_eq!(p.results.len(), 5);
        assert_eq!(p.to_store.len(), 2);
        assert_eq!(p.to_store[1].0, 1);
        let dup = &p.results[2];
        assert_eq!(
            (dup.document, dup.index, dup.outcome.as_str()),
            (1, 0, "failed")
        );
        assert_eq!(
            dup.error,
            "duplicate of document 0 item 0: same subject and chatgpt_account_id"
        );
        assert_eq!(p.results[3].error, "tokens.id_token is missing");
        assert!(p.results[4].error.starts_with("invalid JSON at line 1"));
        for r in &p.results {
            assert!(!r.error.contains("secret"), "{}", r.error);
        }
    }
}
