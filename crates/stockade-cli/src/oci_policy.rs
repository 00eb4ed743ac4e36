//! stockade's policy for `stockade-runc create`: the `org.stockade.*`
//! annotations of the bundle read here, at the edge (the policy file named
//! by `org.stockade.policy`, only from `--policy-dir`), and the egress
//! filter the container's keeper runs (`stockade_core::netwatch` over
//! `stockade_net::Egress`), which `stockade-oci` cannot run itself.

use std::os::fd::OwnedFd;

use anyhow::Context;
use std::path::Path;

use stockade_core::netwatch::NetWatch;
use stockade_core::report::Violation;
use stockade_oci::annotations::{self, ContainerPolicy};
use stockade_oci::supervise::{self, NetFilter};
use stockade_policy::NetworkPolicy;

/// The policy of the container in `bundle`: the policy file (checked
/// against `policy_dir`, read and validated) under the direct keys.
pub fn container_policy(bundle: &Path, policy_dir: &Path) -> anyhow::Result<ContainerPolicy> {
    let spec = stockade_oci::config::Spec::load(bundle)?;
    let a = spec.stockade_annotations()?;
    let file = match &a.policy {
        None => None,
        Some(p) => {
            let real = annotations::policy_path(p, policy_dir)?;
            Some(stockade_policy::Policy::load(&real).with_context(|| {
                format!(
                    "annotation {}: the policy file cannot be used",
                    annotations::POLICY
                )
            })?)
        }
    };
    Ok(ContainerPolicy::combine(file.as_ref(), &a)?)
}

/// The egress filter a keeper runs: core's [`NetWatch`] (the same stack
/// and the same violations as `stockade run`).
#[derive(Default)]
pub struct Filter {
    watch: Option<NetWatch>,
}

fn convert(v: &Violation) -> supervise::Violation {
    supervise::Violation {
        kind: v.kind.as_str().to_string(),
        limit: v.limit.clone(),
        observed: v.observed.clone(),
        at: v.at,
    }
}

impl NetFilter for Filter {
    fn tun_config(&self) -> stockade_isolate::tun::TunConfig {
        stockade_core::prepare::egress_tun()
    }

    fn start(
        &mut self,
        tun: OwnedFd,
        policy: &NetworkPolicy,
        id: &str,
        started_at: f64,
    ) -> Result<(), String> {
        let mut w = NetWatch::new(policy, id, started_at, None);
        w.start(Some(tun))?;
        self.watch = Some(w);
        Ok(())
    }

    fn drain(&mut self) -> Vec<supervise::Violation> {
        let mut out = Vec::new();
        if let Some(w) = &mut self.watch {
            w.drain(&mut |v, _| out.push(convert(v)));
        }
        out
    }

    fn finish(&mut self) -> (Vec<supervise::Violation>, Option<serde_json::Value>) {
        let mut out = Vec::new();
        let Some(w) = &mut self.watch else {
            return (out, None);
        };
        let summary = w.finish(&mut |v, _| out.push(convert(v)));
        (out, summary.and_then(|s| serde_json::to_value(s).ok()))
    }
}
