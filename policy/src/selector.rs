//! Label selectors, as the Kubernetes API defines them: `matchLabels` and
//! `matchExpressions` (In, NotIn, Exists, DoesNotExist) all ANDed; an empty
//! selector selects everything.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use std::collections::BTreeMap;

pub type Labels = BTreeMap<String, String>;

/// Whether `sel` selects every object, whatever its labels (`{}`).
pub fn selects_everything(sel: &LabelSelector) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|e| e.is_empty())
}

/// Whether `sel` selects an object with `labels`. An invalid operator
/// selects nothing (the API server would have rejected the object).
pub fn matches(sel: &LabelSelector, labels: &Labels) -> bool {
    for (k, v) in sel.match_labels.iter().flatten() {
        if labels.get(k) != Some(v) {
            return false;
        }
    }
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default();
        let have = labels.get(&e.key);
        let ok = match e.operator.as_str() {
            "In" => have.is_some_and(|v| values.contains(v)),
            "NotIn" => have.is_none_or(|v| !values.contains(v)),
            "Exists" => have.is_some(),
            "DoesNotExist" => have.is_none(),
            _ => false,
        };
        if !ok {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: (!values.is_empty()).then(|| values.iter().map(|s| s.to_string()).collect()),
        }
    }

    #[test]
    fn every_operator_and_the_empty_selector() {
        let l = labels(&[("pod", "a"), ("tier", "web")]);
        assert!(matches(&LabelSelector::default(), &l));
        let sel = |e: LabelSelectorRequirement| LabelSelector {
            match_expressions: Some(vec![e]),
            ..Default::default()
        };
        assert!(matches(&sel(expr("pod", "In", &["a", "b"])), &l));
        assert!(!matches(&sel(expr("pod", "In", &["c"])), &l));
        assert!(matches(&sel(expr("pod", "NotIn", &["c"])), &l));
        assert!(
            matches(&sel(expr("missing", "NotIn", &["c"])), &l),
            "NotIn matches objects without the key"
        );
        assert!(!matches(&sel(expr("pod", "NotIn", &["a"])), &l));
        assert!(matches(&sel(expr("tier", "Exists", &[])), &l));
        assert!(!matches(&sel(expr("tier", "DoesNotExist", &[])), &l));
        assert!(!matches(&sel(expr("pod", "Bogus", &[])), &l));
        let both = LabelSelector {
            match_labels: Some([("pod".to_string(), "a".to_string())].into()),
            match_expressions: Some(vec![expr("tier", "In", &["db"])]),
        };
        assert!(
            !matches(&both, &l),
            "matchLabels and matchExpressions are ANDed"
        );
    }
}
