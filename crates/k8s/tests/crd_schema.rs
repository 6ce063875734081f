//! The generated CRDs are valid structural schemas and carry the validation poolgate relies
//! on (enums, ranges, required fields, CEL rules), a status subresource and printer columns.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use kube::CustomResourceExt;
use poolgate_k8s::crd::{PROVIDERS, PlatformKey, REASONING_EFFORTS, UpstreamAccount};
use serde_json::{Value, json};

fn crd_json<K: CustomResourceExt>() -> Value {
    serde_json::to_value(K::crd()).unwrap()
}

fn root_schema(crd: &Value) -> &Value {
    &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
}

/// Checks the rules of a structural schema at every node; returns the problems found.
fn structural_problems(node: &Value, path: &str, out: &mut Vec<String>) {
    let Some(obj) = node.as_object() else {
        out.push(format!("{path}: not a schema object"));
        return;
    };
    for forbidden in [
        "$ref",
        "definitions",
        "$defs",
        "oneOf",
        "anyOf",
        "allOf",
        "not",
    ] {
        if obj.contains_key(forbidden) {
            out.push(format!("{path}: has {forbidden}"));
        }
    }
    let preserve = obj.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    let int_or_string = obj.get("x-kubernetes-int-or-string") == Some(&json!(true));
    match obj.get("type").and_then(Value::as_str) {
        None if preserve || int_or_string => {}
        None => out.push(format!("{path}: no type")),
        Some("object") => {
            let props = obj.get("properties").and_then(Value::as_object);
            let additional = obj.get("additionalProperties");
            if props.is_none() && additional.is_none() && !preserve {
                out.push(format!("{path}: object without properties"));
            }
            if let Some(Value::Bool(_)) = additional {
                out.push(format!("{path}: additionalProperties must be a schema"));
            }
            for r in obj
                .get("required")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let r = r.as_str().unwrap();
                if !props.is_some_and(|p| p.contains_key(r)) {
                    out.push(format!("{path}: required {r} is not a property"));
                }
            }
            for (name, child) in props.into_iter().flatten() {
                structural_problems(child, &format!("{path}.{name}"), out);
            }
            if let Some(a @ Value::Object(_)) = additional {
                structural_problems(a, &format!("{path}[*]"), out);
            }
        }
        Some("array") => match obj.get("items") {
            Some(items) => structural_problems(items, &format!("{path}[]"), out),
            None => out.push(format!("{path}: array without items")),
        },
        Some("string" | "integer" | "number" | "boolean") => {}
        Some(other) => out.push(format!("{path}: unknown type {other}")),
    }
}

#[test]
fn both_schemas_are_structural() {
    for crd in [crd_json::<UpstreamAccount>(), crd_json::<PlatformKey>()] {
        let mut problems = Vec::new();
        structural_problems(root_schema(&crd), "", &mut problems);
        assert!(
            problems.is_empty(),
            "{}: {problems:#?}",
            crd["metadata"]["name"]
        );
    }
}

#[test]
fn names_scope_subresources_and_columns() {
    let ua = crd_json::<UpstreamAccount>();
    let pk = crd_json::<PlatformKey>();
    for (crd, name, kind, short) in [
        (
            &ua,
            "upstreamaccounts.poolgate.dev",
            "UpstreamAccount",
            "ua",
        ),
        (&pk, "platformkeys.poolgate.dev", "PlatformKey", "pk"),
    ] {
        assert_eq!(crd["metadata"]["name"], name);
        assert_eq!(crd["spec"]["group"], "poolgate.dev");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        assert_eq!(crd["spec"]["names"]["kind"], kind);
        assert_eq!(crd["spec"]["names"]["shortNames"], json!([short]));
        let v = &crd["spec"]["versions"][0];
        assert_eq!(v["name"], "v1alpha1");
        assert_eq!(
            (v["served"].clone(), v["storage"].clone()),
            (json!(true), json!(true))
        );
        assert_eq!(v["subresources"]["status"], json!({}));
    }
    let columns = |crd: &Value| -> Vec<(String, String)> {
        crd["spec"]["versions"][0]["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                (
                    c["name"].as_str().unwrap().to_string(),
                    c["jsonPath"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let ua_cols = columns(&ua);
    let names: Vec<&str> = ua_cols.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "Provider",
            "Group",
            "Ready",
            "Availability",
            "5h %",
            "7d %",
            "Cooldown",
            "Age"
        ]
    );
    // Every column points at a field the schema has.
    let schema = root_schema(&ua);
    for (_, path) in &ua_cols {
        if path.starts_with(".metadata") || path.contains("[?(") {
            continue;
        }
        let mut node = schema;
        for part in path.trim_start_matches('.').split('.') {
            node = &node["properties"][part];
            assert!(!node.is_null(), "column path {path} is not in the schema");
        }
    }
    let pk_names: Vec<String> = columns(&pk).into_iter().map(|(n, _)| n).collect();
    assert_eq!(pk_names, ["Secret", "Models", "Ready", "Age"]);
}

#[test]
fn upstream_account_validation() {
    let crd = crd_json::<UpstreamAccount>();
    let spec = &root_schema(&crd)["properties"]["spec"];
    let p = &spec["properties"];
    assert_eq!(
        spec["required"],
        json!(["credentialsSecretRef", "provider"])
    );
    assert_eq!(p["provider"]["enum"], json!(PROVIDERS));
    assert_eq!(p["priority"]["minimum"], json!(-1_000_000.0));
    assert_eq!(p["priority"]["maximum"], json!(1_000_000.0));
    assert_eq!(p["maxInFlight"]["maximum"], json!(100_000.0));
    assert_eq!(p["tags"]["maxItems"], 32);
    assert_eq!(p["models"]["maxItems"], 256);
    assert_eq!(p["note"]["maxLength"], 1024);
    assert_eq!(p["credentialsSecretRef"]["required"], json!(["name"]));
    assert_eq!(
        p["credentialsSecretRef"]["properties"]["name"]["maxLength"],
        253
    );
    assert!(
        p["baseUrl"]["pattern"]
            .as_str()
            .unwrap()
            .starts_with("^https?://")
    );
    assert_eq!(p["azure"]["required"], json!(["apiVersion", "deployment"]));
    // Credentials are only ever referenced: nothing in the spec can hold one.
    let names: Vec<&String> = p.as_object().unwrap().keys().collect();
    for n in &names {
        let l = n.to_lowercase();
        assert!(
            !(l.contains("apikey") || l.contains("token") || l.contains("authjson")),
            "spec.{n} looks like an inline credential"
        );
    }
    let rules = cel_rules(spec);
    assert!(
        rules
            .iter()
            .any(|r| r.contains("has(self.azure) && has(self.baseUrl)"))
    );
    assert!(rules.contains(&"self.provider == oldSelf.provider"));
    // CEL rules only use fields the schema has.
    assert_rules_use_known_fields(&rules, p);
    let status = &root_schema(&crd)["properties"]["status"]["properties"];
    assert_eq!(
        status["conditions"]["items"]["properties"]["status"]["enum"],
        json!(["True", "False", "Unknown"])
    );
    assert_eq!(status["conditions"]["x-kubernetes-list-type"], "map");
    assert_eq!(status["cooldownUntil"]["format"], "date-time");
    assert_eq!(
        status["usage"]["properties"]["fiveHour"]["required"],
        json!(["usedPercent"])
    );
}

/// The CEL rules of a schema's `x-kubernetes-validations`.
fn cel_rules(schema: &Value) -> Vec<&str> {
    schema["x-kubernetes-validations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["rule"].as_str().unwrap())
        .collect()
}

/// CEL rules may only use fields the schema has (`properties`).
fn assert_rules_use_known_fields(rules: &[&str], properties: &Value) {
    for rule in rules {
        for field in rule.split("self.").skip(1) {
            let field: String = field
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            assert!(
                properties.get(&field).is_some(),
                "rule {rule} uses unknown field {field}"
            );
        }
    }
}

#[test]
fn platform_key_validation() {
    let crd = crd_json::<PlatformKey>();
    let spec = &root_schema(&crd)["properties"]["spec"];
    let p = &spec["properties"];
    assert_eq!(p["reasoningEffort"]["enum"], json!(REASONING_EFFORTS));
    assert_eq!(p["accountGroups"]["maxItems"], 64);
    assert_eq!(p["allowedModels"]["items"]["maxLength"], 128);
    assert_eq!(p["expiresAt"]["format"], "date-time");
    assert_eq!(p["secretName"]["maxLength"], 253);
    assert_eq!(p["modelOverride"]["pattern"], "^[^*\\s]{1,128}$");
    let rules = cel_rules(spec);
    assert!(
        rules
            .iter()
            .any(|r| r.contains("self.secretName == oldSelf.secretName"))
    );
    assert!(
        rules
            .iter()
            .any(|r| r.contains("self.allowedModels.exists"))
    );
    assert_rules_use_known_fields(&rules, p);
}
