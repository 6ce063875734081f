//! `GET /v1/models`, answered locally (seed spec §7.1 [H], §18.9): OpenAI SDKs read
//! `data[]`, the Codex CLI reads `models[]`, and an `etag` lets clients skip unchanged lists.

use std::collections::BTreeSet;

use bytes::Bytes;
use poolgate_core::glob;
use poolgate_core::snapshot::KeyGrant;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::state::View;

struct Known {
    slug: &'static str,
    display_name: &'static str,
    description: &'static str,
    efforts: &'static [&'static str],
    context_window: i64,
}

/// Models the Codex backend serves; accounts may add more through their model filters.
const BUILTIN: &[Known] = &[
    Known {
        slug: "gpt-5.4",
        display_name: "GPT-5.4",
        description: "Frontier model for coding and agentic work.",
        efforts: &["low", "medium", "high", "xhigh"],
        context_window: 272_000,
    },
    Known {
        slug: "gpt-5.4-mini",
        display_name: "GPT-5.4 Mini",
        description: "Smaller, faster GPT-5.4.",
        efforts: &["low", "medium", "high"],
        context_window: 272_000,
    },
    Known {
        slug: "gpt-5.3-codex",
        display_name: "GPT-5.3 Codex",
        description: "Codex-tuned model for software engineering.",
        efforts: &["low", "medium", "high", "xhigh"],
        context_window: 272_000,
    },
    Known {
        slug: "gpt-5.2-codex",
        display_name: "GPT-5.2 Codex",
        description: "Codex-tuned model for software engineering.",
        efforts: &["low", "medium", "high", "xhigh"],
        context_window: 272_000,
    },
    Known {
        slug: "gpt-5.2",
        display_name: "GPT-5.2",
        description: "General-purpose reasoning model.",
        efforts: &["low", "medium", "high", "xhigh"],
        context_window: 272_000,
    },
    Known {
        slug: "gpt-5.1-codex-mini",
        display_name: "GPT-5.1 Codex Mini",
        description: "Small, fast Codex model.",
        efforts: &["medium", "high"],
        context_window: 272_000,
    },
];

const BASE_INSTRUCTIONS: &str = "You are a coding agent. Follow the user's instructions, use the \
tools you are given, and keep your answers concise.";

fn effort_description(e: &str) -> &'static str {
    match e {
        "minimal" => "Fastest responses, very little reasoning",
        "low" => "Fast responses with light reasoning",
        "medium" => "Balances speed and reasoning depth",
        "high" => "Deeper reasoning for complex problems",
        "xhigh" => "Maximum reasoning depth for the hardest problems",
        _ => "Reasoning effort",
    }
}

fn codex_entry(slug: &str, priority: usize) -> Value {
    let known = BUILTIN.iter().find(|k| k.slug == slug);
    let efforts: &[&str] = known.map_or(&["low", "medium", "high"], |k| k.efforts);
    let default = if efforts.contains(&"medium") {
        "medium"
    } else {
        efforts.first().copied().unwrap_or("medium")
    };
    json!({
        "slug": slug,
        "display_name": known.map_or(slug, |k| k.display_name),
        "description": known.map_or("", |k| k.description),
        "default_reasoning_level": default,
        "supported_reasoning_levels": efforts.iter().map(|e| json!({
            "effort": e,
            "description": effort_description(e),
        })).collect::<Vec<_>>(),
        "shell_type": "shell_command",
        "visibility": "list",
        "supported_in_api": true,
        "priority": priority,
        "upgrade": null,
        "base_instructions": BASE_INSTRUCTIONS,
        "supports_reasoning_summaries": true,
        "support_verbosity": false,
        "default_verbosity": null,
        "apply_patch_tool_type": "freeform",
        "truncation_policy": {"mode": "tokens", "limit": 10_000},
        "supports_parallel_tool_calls": true,
        "context_window": known.map_or(128_000, |k| k.context_window),
        "experimental_supported_tools": [],
        "input_modalities": ["text", "image"],
    })
}

/// The model ids a key can see: the key's override alone when it has one; else the
/// built-in catalog plus the concrete names in enabled accounts' model filters, narrowed
/// to the key's allowed models.
pub(crate) fn model_ids(view: &View, key: &KeyGrant) -> Vec<String> {
    if let Some(m) = &key.model_override {
        return vec![m.clone()];
    }
    let mut ids: Vec<String> = BUILTIN.iter().map(|k| k.slug.to_string()).collect();
    let mut seen: BTreeSet<String> = ids.iter().cloned().collect();
    let mut extra: BTreeSet<String> = BTreeSet::new();
    for a in view.accounts.iter().filter(|a| a.enabled) {
        for m in &a.model_filter {
            if !m.contains('*') && !m.is_empty() && !seen.contains(m) {
                extra.insert(m.clone());
            }
        }
    }
    for m in extra {
        seen.insert(m.clone());
        ids.push(m);
    }
    ids.retain(|m| glob::allowed(&key.allowed_models, m));
    ids
}

/// The JSON body and its etag.
pub(crate) fn models_body(view: &View, key: &KeyGrant) -> (Bytes, String) {
    let ids = model_ids(view, key);
    let data: Vec<Value> = ids
        .iter()
        .map(|id| {
            let name = BUILTIN
                .iter()
                .find(|k| k.slug == id)
                .map_or(id.as_str(), |k| k.display_name);
            json!({
                "id": id,
                "object": "model",
                "created": 0,
                "owned_by": "poolgate",
                "display_name": name,
            })
        })
        .collect();
    let models: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| codex_entry(id, i))
        .collect();
    let body = json!({"object": "list", "data": data, "models": models}).to_string();
    let digest = Sha256::digest(body.as_bytes());
    let etag = format!("\"{}\"", hex::encode(&digest[..12]));
    (Bytes::from(body), etag)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_carry_what_codex_requires() {
        let e = codex_entry("gpt-5.3-codex", 0);
        for field in [
            "slug",
            "display_name",
            "supported_reasoning_levels",
            "shell_type",
            "visibility",
            "supported_in_api",
            "priority",
            "base_instructions",
            "supports_reasoning_summaries",
            "support_verbosity",
            "truncation_policy",
            "supports_parallel_tool_calls",
            "experimental_supported_tools",
        ] {
            assert!(e.get(field).is_some(), "{field}");
        }
        assert_eq!(e["default_reasoning_level"], "medium");
        let custom = codex_entry("my-model", 3);
        assert_eq!(custom["display_name"], "my-model");
        assert_eq!(custom["priority"], 3);
    }
}
