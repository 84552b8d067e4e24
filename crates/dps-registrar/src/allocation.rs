//! Which hub a device gets: the candidate hubs of an enrollment and the built-in policies
//! (static, hashed, geoLatency). The custom policy is in `webhook.rs`.

use dps_types::{AllocationPolicy, HubName};
use sha2::{Digest, Sha256};

/// An IoT hub devices can be assigned to (a DPS "linked hub").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkedHub {
    /// The hub's host name.
    pub host_name: HubName,
    /// Relative weight for the hashed policy, 1 to 1000.
    pub allocation_weight: u32,
    /// When false, policies only pick this hub for enrollments that name it.
    pub apply_allocation_policy: bool,
}

/// The parts of an enrollment that allocation reads (individual and group alike).
pub struct AllocationInput<'a> {
    /// The enrollment's policy, if any.
    pub policy: Option<AllocationPolicy>,
    /// `iotHubHostName`.
    pub iot_hub_host_name: Option<&'a HubName>,
    /// `iotHubs`.
    pub iot_hubs: &'a [HubName],
}

/// Why no hub could be chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NoHub {
    /// The static policy needs exactly one linked hub on the enrollment.
    StaticNeedsOneHub,
    /// Nothing to choose from (no linked hubs, or all excluded).
    NoCandidates,
    /// The enrollment names hubs, but none of them is linked (it was stored before hub names
    /// were checked on write, or the hub was unlinked since). The first one is kept to name it.
    NoneLinked(HubName),
}

impl std::fmt::Display for NoHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NoHub::StaticNeedsOneHub => f.write_str(
                "the static allocation policy needs exactly one linked IoT hub on the enrollment",
            ),
            NoHub::NoCandidates => f.write_str("no IoT hub is available for allocation"),
            NoHub::NoneLinked(first) => write!(
                f,
                "the enrollment names only IoT hubs that are not linked to this service \
                 (e.g. '{first}')"
            ),
        }
    }
}

/// The hubs an enrollment may be assigned to, each with its linked-hub weight: the linked
/// ones among its own `iotHubs` (or `iotHubHostName`) when it names any, else every linked
/// hub whose `applyAllocationPolicy` is true. A named hub that is not linked is never a
/// candidate; when the enrollment names hubs and none is linked, that is [`NoHub::NoneLinked`]
/// (falling back to other hubs would ignore the enrollment's choice).
pub fn candidates(
    input: &AllocationInput<'_>,
    linked: &[LinkedHub],
) -> Result<Vec<(HubName, u32)>, NoHub> {
    let named: Vec<&HubName> = if input.iot_hubs.is_empty() {
        input.iot_hub_host_name.into_iter().collect()
    } else {
        input.iot_hubs.iter().collect()
    };
    let Some(first) = named.first() else {
        return Ok(linked
            .iter()
            .filter(|l| l.apply_allocation_policy)
            .map(|l| (l.host_name.clone(), l.allocation_weight))
            .collect());
    };
    let usable: Vec<(HubName, u32)> = named
        .iter()
        .filter_map(|h| linked.iter().find(|l| &l.host_name == *h))
        .map(|l| (l.host_name.clone(), l.allocation_weight))
        .collect();
    if usable.is_empty() {
        return Err(NoHub::NoneLinked((*first).clone()));
    }
    Ok(usable)
}

/// Applies a built-in policy (`Custom` is handled by the caller). `GeoLatency` has no latency
/// data here and falls back to `Hashed`, as DPS does between hubs of equal latency. Static
/// takes the one linked hub the enrollment names.
pub fn choose(
    policy: AllocationPolicy,
    input: &AllocationInput<'_>,
    linked: &[LinkedHub],
    registration_key: &str,
) -> Result<HubName, NoHub> {
    let candidates = candidates(input, linked)?;
    if policy == AllocationPolicy::Static {
        let named = !input.iot_hubs.is_empty() || input.iot_hub_host_name.is_some();
        return match candidates.as_slice() {
            [(one, _)] if named => Ok(one.clone()),
            _ => Err(NoHub::StaticNeedsOneHub),
        };
    }
    weighted_rendezvous(&candidates, registration_key).ok_or(NoHub::NoCandidates)
}

/// Weighted rendezvous (highest-random-weight) hashing: every (device, hub) pair gets a
/// pseudo-random score scaled by the hub's weight; the highest wins. A device keeps its hub as
/// long as the hub stays a candidate, and adding or removing a hub moves only the devices that
/// must move. Each hub is chosen with probability proportional to its weight.
pub fn weighted_rendezvous(
    candidates: &[(HubName, u32)],
    registration_key: &str,
) -> Option<HubName> {
    candidates
        .iter()
        .map(|(hub, weight)| {
            let digest = Sha256::new()
                .chain_update(registration_key)
                .chain_update([0])
                .chain_update(hub.as_str())
                .finalize();
            let mut first = [0u8; 8];
            first.copy_from_slice(&digest[..8]);
            // Uniform in (0, 1): never 0, so the logarithm is finite and negative.
            let unit = ((u64::from_be_bytes(first) >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
            let score = -f64::from((*weight).max(1)) / unit.ln();
            (score, hub)
        })
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, hub)| hub.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(name: &str) -> HubName {
        HubName::parse(name).unwrap()
    }

    fn linked(specs: &[(&str, u32, bool)]) -> Vec<LinkedHub> {
        specs
            .iter()
            .map(|(n, w, a)| LinkedHub {
                host_name: hub(n),
                allocation_weight: *w,
                apply_allocation_policy: *a,
            })
            .collect()
    }

    const NONE: AllocationInput<'static> = AllocationInput {
        policy: None,
        iot_hub_host_name: None,
        iot_hubs: &[],
    };

    #[test]
    fn hashed_is_stable_and_follows_weights() {
        let hubs = linked(&[("a.example", 1, true), ("b.example", 3, true)]);
        let mut count_b = 0;
        for i in 0..4000 {
            let key = format!("device-{i}");
            let first = choose(AllocationPolicy::Hashed, &NONE, &hubs, &key).unwrap();
            assert_eq!(
                first,
                choose(AllocationPolicy::Hashed, &NONE, &hubs, &key).unwrap(),
                "stable"
            );
            count_b += usize::from(first == hub("b.example"));
        }
        // Weight 3 of 4: expect 3000; allow a generous band for a fixed hash.
        assert!((2800..=3200).contains(&count_b), "b got {count_b} of 4000");
    }

    #[test]
    fn excluded_hubs_are_not_chosen_unless_named() {
        let hubs = linked(&[("a.example", 1, false), ("b.example", 1, true)]);
        for i in 0..100 {
            assert_eq!(
                choose(AllocationPolicy::Hashed, &NONE, &hubs, &format!("d{i}")).unwrap(),
                hub("b.example")
            );
        }
        let named = [hub("a.example")];
        let input = AllocationInput {
            policy: None,
            iot_hub_host_name: None,
            iot_hubs: &named,
        };
        assert_eq!(
            choose(AllocationPolicy::Hashed, &input, &hubs, "d").unwrap(),
            hub("a.example")
        );
    }

    #[test]
    fn static_needs_exactly_one_hub() {
        let hubs = linked(&[("s.example", 1, true), ("a.example", 1, true)]);
        let one = hub("s.example");
        let input = AllocationInput {
            policy: None,
            iot_hub_host_name: Some(&one),
            iot_hubs: &[],
        };
        assert_eq!(
            choose(AllocationPolicy::Static, &input, &hubs, "d").unwrap(),
            one
        );
        let two = [hub("a.example"), hub("s.example")];
        let input = AllocationInput {
            policy: None,
            iot_hub_host_name: None,
            iot_hubs: &two,
        };
        assert_eq!(
            choose(AllocationPolicy::Static, &input, &hubs, "d"),
            Err(NoHub::StaticNeedsOneHub)
        );
        assert_eq!(
            choose(AllocationPolicy::Static, &NONE, &hubs, "d"),
            Err(NoHub::StaticNeedsOneHub)
        );
        assert_eq!(
            choose(AllocationPolicy::Hashed, &NONE, &[], "d"),
            Err(NoHub::NoCandidates)
        );
    }

    #[test]
    fn hubs_that_are_not_linked_are_never_assigned() {
        let hubs = linked(&[("a.example", 1, true), ("b.example", 1, true)]);
        let rogue = hub("rogue.example");
        let static_rogue = AllocationInput {
            policy: None,
            iot_hub_host_name: Some(&rogue),
            iot_hubs: &[],
        };
        for policy in [AllocationPolicy::Static, AllocationPolicy::Hashed] {
            assert_eq!(
                choose(policy, &static_rogue, &hubs, "d"),
                Err(NoHub::NoneLinked(rogue.clone()))
            );
        }
        let mixed = [hub("rogue.example"), hub("b.example")];
        let input = AllocationInput {
            policy: None,
            iot_hub_host_name: None,
            iot_hubs: &mixed,
        };
        assert_eq!(candidates(&input, &hubs), Ok(vec![(hub("b.example"), 1)]));
        for i in 0..100 {
            let key = format!("d{i}");
            for policy in [AllocationPolicy::Static, AllocationPolicy::Hashed] {
                assert_eq!(choose(policy, &input, &hubs, &key), Ok(hub("b.example")));
            }
        }
        let err = NoHub::NoneLinked(rogue).to_string();
        assert!(
            err.contains("not linked") && err.contains("rogue.example"),
            "{err}"
        );
    }

    #[test]
    fn removing_a_hub_moves_only_its_devices() {
        let three = linked(&[
            ("a.example", 1, true),
            ("b.example", 1, true),
            ("c.example", 1, true),
        ]);
        let two = linked(&[("a.example", 1, true), ("b.example", 1, true)]);
        for i in 0..500 {
            let key = format!("d{i}");
            let before = choose(AllocationPolicy::Hashed, &NONE, &three, &key).unwrap();
            let after = choose(AllocationPolicy::Hashed, &NONE, &two, &key).unwrap();
            if before != hub("c.example") {
                assert_eq!(before, after);
            }
        }
    }
}
