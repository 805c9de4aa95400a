//! `resourceFieldRef` values and the resource quantities they read: the
//! kubelet's `containerResourceRuntimeValue` after
//! `defaultPodLimitsForDownwardAPI` (pkg/kubelet/kubelet_resources.go), and
//! `resource.Quantity` parsing, exactly (no floating point).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, ResourceFieldSelector};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::find_container;

/// `resourceFieldRef`, as the kubelet's `containerResourceRuntimeValue`
/// after `defaultPodLimitsForDownwardAPI`.
///
/// A limit that is unset (or zero) is the pod-level limit (cpu, memory)
/// if there is one, else the node's allocatable, which is unknown here:
/// left out with a note (an unset hugepages limit is 0). A request that
/// is unset is the container's limit (the API server's defaulting copies
/// it; done here too for an object that skipped it), else 0, as the
/// kubelet reads an unset request.
pub(super) fn value(
    pod: &Pod,
    sel: &ResourceFieldSelector,
    own: &Container,
) -> Result<String, String> {
    let what = &sel.resource;
    let target = match sel.container_name.as_deref().filter(|n| !n.is_empty()) {
        None => own,
        Some(n) => find_container(pod, n).ok_or_else(|| {
            format!("resourceFieldRef `{what}`: no container {n} in the pod; fix: set it yourself")
        })?,
    };
    let (kind, res) = what.split_once('.').unwrap_or_default();
    let (cpu, hugepages) = (res == "cpu", res.starts_with("hugepages-"));
    let known = cpu || hugepages || res == "memory" || res == "ephemeral-storage";
    if !known || !matches!(kind, "limits" | "requests") {
        return Err(format!(
            "resourceFieldRef `{what}` is not a resource the kubelet exposes (limits or requests of cpu, memory, ephemeral-storage, hugepages-*); fix: set it yourself"
        ));
    }
    let parse =
        |q: &Quantity| parse_quantity(q).map_err(|e| format!("resourceFieldRef `{what}`: {e}"));
    let read = |list: Option<&BTreeMap<String, Quantity>>| {
        list.and_then(|l| l.get(res)).map(parse).transpose()
    };
    let resources = target.resources.as_ref();
    let limit = read(resources.and_then(|r| r.limits.as_ref()))?.filter(|a| a.num != 0);
    let pod_limits = pod.spec.as_ref().and_then(|s| s.resources.as_ref());
    let value = if kind == "requests" {
        read(resources.and_then(|r| r.requests.as_ref()))?
            .or(limit)
            .unwrap_or(Amount::ZERO)
    } else if let Some(limit) = limit {
        limit
    } else if hugepages {
        Amount::ZERO
    } else if let Some(pod_limit) = read(pod_limits.and_then(|r| r.limits.as_ref()))?
        .filter(|a| a.num != 0 && (cpu || res == "memory"))
    {
        pod_limit
    } else {
        return Err(format!(
            "container {} sets no {what}, so the kubelet gives the node's allocatable, which netmux does not know; fix: set it yourself",
            target.name
        ));
    };
    // A zero divisor is 1, as the kubelet takes it.
    let divisor = sel
        .divisor
        .as_ref()
        .map(parse)
        .transpose()?
        .filter(|d| d.num != 0);
    let divisor = divisor.unwrap_or(Amount::ONE);
    let out = if cpu {
        // MilliValue() of both, rounded up, then the quotient's ceiling.
        let too_big = || format!("resourceFieldRef `{what}`: the value is too large");
        let (v, d) = (
            value.milli().ok_or_else(too_big)?,
            divisor.milli().ok_or_else(too_big)?,
        );
        v.div_ceil(d.max(1))
    } else {
        value.whole().div_ceil(divisor.whole().max(1))
    };
    Ok(out.to_string())
}

/// A non-negative quantity, exactly: `num / den`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Amount {
    num: u128,
    den: u128,
}

impl Amount {
    const ONE: Amount = Amount { num: 1, den: 1 };
    const ZERO: Amount = Amount { num: 0, den: 1 };

    /// Thousandths, rounded up (resource.Quantity's `MilliValue`).
    fn milli(self) -> Option<u128> {
        Some(self.num.checked_mul(1000)?.div_ceil(self.den))
    }

    /// The whole value, rounded up (resource.Quantity's `Value`).
    fn whole(self) -> u128 {
        self.num.div_ceil(self.den)
    }
}

/// Decimal suffixes, from 10^-9 up by 10^3.
const DECIMAL: [&str; 10] = ["n", "u", "m", "", "k", "M", "G", "T", "P", "E"];

/// Binary suffixes, from 2^10 up by 2^10.
const BINARY: [&str; 6] = ["Ki", "Mi", "Gi", "Ti", "Pi", "Ei"];

/// Parses a resource quantity: a number (`2`, `0.5`, `.5`) with a decimal
/// suffix (n u m k M G T P E), a binary one (Ki … Ei) or an exponent
/// (`1e3`, `5E-1`). Negative quantities are refused.
pub(super) fn parse_quantity(quantity: &Quantity) -> Result<Amount, String> {
    let text = quantity.0.as_str();
    let bad = |why: &str| format!("quantity `{text}` {why}");
    let too_big = || bad("is too large");
    let body = text.strip_prefix('+').unwrap_or(text);
    let end = body
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(body.len());
    let (number, suffix) = body.split_at(end);
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if body.starts_with('-') {
        return Err(bad("is negative"));
    } else if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad("is not a number"));
    }
    let mut num: u128 = 0;
    for d in int.bytes().chain(frac.bytes()) {
        let next = num
            .checked_mul(10)
            .and_then(|n| n.checked_add(u128::from(d - b'0')));
        num = next.ok_or_else(too_big)?;
    }
    // The value is num × 10^exp × 2^shift.
    let (exp, shift) = if let Some(i) = DECIMAL.iter().position(|d| *d == suffix) {
        (3 * i as i64 - 9, 0)
    } else if let Some(i) = BINARY.iter().position(|b| *b == suffix) {
        (0, 10 * (i as u32 + 1))
    } else {
        let exp = suffix
            .strip_prefix(['e', 'E'])
            .and_then(|e| e.parse::<i64>().ok());
        (
            exp.ok_or_else(|| bad("has a suffix netmux does not read"))?,
            0,
        )
    };
    let exp = exp - frac.len() as i64;
    let scale = u32::try_from(exp.unsigned_abs())
        .ok()
        .and_then(|e| 10u128.checked_pow(e));
    let scale = scale.ok_or_else(too_big)?;
    let (num, den) = match exp < 0 {
        true => (num, scale),
        false => (num.checked_mul(scale).ok_or_else(too_big)?, 1),
    };
    let num = num.checked_mul(1 << shift).ok_or_else(too_big)?;
    Ok(Amount { num, den })
}
