//! The socket-level load balancer (ebpf/programs/sock.c): its cgroup hooks,
//! attached below a cgroup v2 directory with pinned links, and its maps
//! (reverse translations, the per-namespace opt-out, per-frontend counters).

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray};
use aya::programs::links::FdLink;
use aya::programs::{CgroupAttachMode, CgroupSockAddr};
use aya::Ebpf;
use std::path::{Path, PathBuf};
use strake_ebpf::shared::{self, sock_lb_stats};

/// The hooks, in attach order, with what each does (for status).
pub const PROGRAMS: [(&str, &str); 4] = [
    ("sock_connect4", "cgroup connect4"),
    ("sock_sendmsg4", "cgroup sendmsg4"),
    ("sock_recvmsg4", "cgroup recvmsg4"),
    ("sock_getpeername4", "cgroup getpeername4"),
];

/// Summed per-CPU socket counters of one frontend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SockCounters {
    pub connects: u64,
    pub datagrams: u64,
    pub refused: u64,
}

pub struct SockLb {
    pub(crate) ebpf: Ebpf,
    optout: BpfHashMap<MapData, u64, u32>,
    stats: PerCpuArray<MapData, sock_lb_stats>,
    /// Where the hooks are attached, once they are.
    cgroup: Option<PathBuf>,
}

impl SockLb {
    pub(crate) fn new(mut ebpf: Ebpf) -> Result<Self> {
        for (name, _) in PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or_else(|| anyhow!("program {name} missing from its object"))?
                .try_into()?;
            prog.load()
                .with_context(|| format!("verifier rejected program {name}"))?;
        }
        let mut take = |c: &'static [u8]| {
            let name = crate::map_name(c);
            ebpf.take_map(name)
                .ok_or_else(|| anyhow!("map {name} missing from the socket object"))
        };
        let optout = BpfHashMap::try_from(take(shared::STRAKE_MAP_SOCK_OPTOUT)?)?;
        let stats = PerCpuArray::try_from(take(shared::STRAKE_MAP_FE_SOCK_STATS)?)?;
        Ok(SockLb {
            ebpf,
            optout,
            stats,
            cgroup: None,
        })
    }

    /// Attaches the hooks to the cgroup v2 directory `cgroup` (they apply
    /// to every process below it), pinning each link under `links`.
    ///
    /// A link pinned by an earlier agent is replaced without a gap: the new
    /// program is attached beside the old one (multi-attach), then its pin
    /// is renamed over the old pin, which drops the old link. While both
    /// run, the first translates and the second sees a backend, no
    /// frontend, and leaves the socket alone.
    pub fn attach(&mut self, cgroup: &Path, links: &Path) -> Result<()> {
        let dir = std::fs::File::open(cgroup)
            .with_context(|| format!("opening cgroup {}", cgroup.display()))?;
        for (name, what) in PROGRAMS {
            let prog: &mut CgroupSockAddr = self
                .ebpf
                .program_mut(name)
                .expect("checked at load")
                .try_into()?;
            // A bpf_link on a cgroup is always multi-attach; the kernel
            // wants no flags for it (ALLOW_MULTI is EINVAL there).
            let id = prog
                .attach(&dir, CgroupAttachMode::Single)
                .with_context(|| {
                    format!("attaching {name} ({what}) to cgroup {}", cgroup.display())
                })?;
            let link: FdLink = prog.take_link(id)?.try_into()?;
            let pin = links.join(name);
            let fresh = links.join(format!("{name}_new"));
            let _ = std::fs::remove_file(&fresh);
            link.pin(&fresh)
                .with_context(|| format!("pinning link {}", fresh.display()))?;
            std::fs::rename(&fresh, &pin)
                .with_context(|| format!("renaming {} over {}", fresh.display(), pin.display()))?;
        }
        self.cgroup = Some(cgroup.to_path_buf());
        Ok(())
    }

    /// The cgroup the hooks are attached below (None: socket LB is off).
    pub fn cgroup(&self) -> Option<&Path> {
        self.cgroup.as_deref()
    }

    /// Network namespaces opted out (their netns cookies).
    pub fn opted_out(&self) -> Result<Vec<u64>> {
        Ok(self.optout.keys().collect::<Result<_, _>>()?)
    }

    pub fn set_opt_out(&mut self, netns_cookie: u64, out: bool) -> Result<()> {
        if out {
            self.optout
                .insert(netns_cookie, 1, 0)
                .context("writing st_sock_optout")
        } else {
            match self.optout.remove(&netns_cookie) {
                Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
                Err(MapError::SyscallError(e))
                    if e.io_error.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(())
                }
                Err(e) => Err(anyhow!(e).context("removing from st_sock_optout")),
            }
        }
    }

    pub fn frontend_counters(&self, id: u32) -> SockCounters {
        self.stats
            .get(&id, 0)
            .map(|v| {
                v.iter().fold(SockCounters::default(), |a, s| SockCounters {
                    connects: a.connects + s.connects,
                    datagrams: a.datagrams + s.datagrams,
                    refused: a.refused + s.refused,
                })
            })
            .unwrap_or_default()
    }

    /// Zeroes the counters of a recycled frontend id.
    pub fn reset_counters(&mut self, id: u32) -> Result<()> {
        let n = aya::util::nr_cpus().map_err(|(_, e)| e)?;
        self.stats.set(
            id,
            aya::maps::PerCpuValues::try_from(vec![sock_lb_stats::default(); n])?,
            0,
        )?;
        Ok(())
    }
}

/// The cgroup v2 mount point, from /proc/self/mountinfo: `/sys/fs/cgroup`
/// on a unified host, `/sys/fs/cgroup/unified` on a hybrid one.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").context("reading mountinfo")?;
    cgroup2_in_mountinfo(&info).ok_or_else(|| {
        anyhow!(
            "no cgroup2 filesystem is mounted (mountinfo lists none); mount one \
             (mount -t cgroup2 none /sys/fs/cgroup) or pass --cgroup-root"
        )
    })
}

fn cgroup2_in_mountinfo(info: &str) -> Option<PathBuf> {
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split(' ').next()? != "cgroup2" {
            return None;
        }
        pre.split(' ').nth(4).map(PathBuf::from)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_layout() {
        let info = "35 24 0:30 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                    41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n\
                    42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n";
        assert_eq!(
            cgroup2_in_mountinfo(info),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_in_mountinfo("42 31 0:39 / /sys/fs/cgroup/memory rw - cgroup cgroup rw\n"),
            None
        );
    }
}
