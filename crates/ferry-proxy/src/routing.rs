//! Weighted routing between revisions (canary splits) and the compiled form
//! of a routing table the hot path reads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::header::{self, HeaderName};

use crate::headers::{HeaderView, X_FERRY_REVISION};
use crate::random::{mix, random_u64};
use crate::upstream::Upstream;

/// Basis points in a whole (100 %).
pub const WHOLE: u32 = 10_000;

/// The set of upstreams that take traffic, and how traffic splits between
/// their revisions.
#[derive(Clone, Default, Debug)]
pub struct RoutingTable {
    /// Upstreams taking traffic.
    pub upstreams: Vec<Arc<Upstream>>,
    /// `None`: plain round-robin over all upstreams.
    pub split: Option<Split>,
    /// The revision `X-Ferry-Revision: stable` selects.
    pub stable: Option<u64>,
}

/// Why no upstream was chosen for a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoRoute {
    /// Nothing (left untried) to send it to.
    Exhausted,
    /// `X-Ferry-Revision` is not a revision number, `stable` or `canary`.
    BadPin,
    /// `X-Ferry-Revision` names a revision with no upstream taking
    /// requests here.
    Unavailable(Pin),
}

/// What a request's `X-Ferry-Revision` asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pin {
    Revision(u64),
    Canary,
    Stable,
}

impl NoRoute {
    /// The answer to a request pinned to a revision it cannot have (`None`
    /// for `Exhausted`, which the caller answers its own way).
    pub(crate) fn pin_refusal(self) -> Option<(http::StatusCode, bytes::Bytes)> {
        let text = match self {
            NoRoute::Exhausted => return None,
            NoRoute::BadPin => {
                return Some((
                    http::StatusCode::BAD_REQUEST,
                    bytes::Bytes::from_static(
                        b"X-Ferry-Revision must be a revision number, `stable` or `canary`\n",
                    ),
                ));
            }
            NoRoute::Unavailable(Pin::Revision(n)) => format!(
                "X-Ferry-Revision: revision {n} has no instance taking requests here (no such revision, stopped, or not ready yet); `ferry status` lists what runs\n"
            ),
            NoRoute::Unavailable(Pin::Canary) => {
                "X-Ferry-Revision: no canary takes requests here (no rollout is under way, or its instances are not ready yet)\n".to_string()
            }
            NoRoute::Unavailable(Pin::Stable) => {
                "X-Ferry-Revision: the stable revision has no instance taking requests here\n".to_string()
            }
        };
        Some((
            http::StatusCode::SERVICE_UNAVAILABLE,
            bytes::Bytes::from(text),
        ))
    }
}

/// How traffic splits between revisions. `None` in
/// [`RoutingTable::split`] means plain round-robin over all upstreams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Split {
    /// Share of traffic per revision, in basis points (0..=10 000), summing to
    /// 10 000. Revisions listed here with weight 0 get no unforced traffic.
    /// Buckets are laid out in this order, except that `canary` (if listed)
    /// always comes first: raising the canary's weight never moves a sticky
    /// user from the canary back to another revision.
    pub weights: Vec<(u64, u32)>,
    /// Where a user's stable identity comes from; `None` draws every request
    /// independently.
    pub stickiness: Stickiness,
    /// The revision `X-Ferry-Revision: canary` selects.
    pub canary: Option<u64>,
}

/// Where a sticky user's identity is read from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Stickiness {
    /// Every request is drawn independently.
    #[default]
    None,
    /// The value of this request header (e.g. `x-user-id`).
    Header(HeaderName),
    /// The value of this cookie.
    Cookie(String),
}

/// One revision's upstreams inside a compiled table.
#[derive(Debug)]
struct Group {
    revision: u64,
    /// Indexes into `RoutingTable::upstreams`.
    members: Vec<usize>,
    next: AtomicUsize,
}

/// The routing table plus what the hot path needs precomputed.
#[derive(Debug)]
pub(crate) struct Routes {
    pub(crate) table: Arc<RoutingTable>,
    groups: Vec<Group>,
    /// `(end bucket exclusive, group index or NONE)`, ascending; empty
    /// when there is no split.
    layout: Vec<(u32, usize)>,
    stickiness: Stickiness,
    canary_group: Option<usize>,
    stable_group: Option<usize>,
    next: AtomicUsize,
}

const NO_GROUP: usize = usize::MAX;

impl Routes {
    pub(crate) fn new(table: Arc<RoutingTable>) -> Routes {
        let mut groups: Vec<Group> = Vec::new();
        for (i, u) in table.upstreams.iter().enumerate() {
            match groups.iter_mut().find(|g| g.revision == u.revision()) {
                Some(g) => g.members.push(i),
                None => groups.push(Group {
                    revision: u.revision(),
                    members: vec![i],
                    next: AtomicUsize::new(0),
                }),
            }
        }
        let group_of = |rev: u64| groups.iter().position(|g| g.revision == rev);
        let mut layout = Vec::new();
        let mut stickiness = Stickiness::None;
        let mut canary_group = None;
        if let Some(split) = &table.split {
            stickiness = split.stickiness.clone();
            canary_group = split.canary.and_then(group_of);
            // The canary first, then the rest in the order given.
            let mut ordered: Vec<(u64, u32)> = Vec::with_capacity(split.weights.len());
            if let Some(c) = split.canary
                && let Some(&w) = split.weights.iter().find(|(r, _)| *r == c)
            {
                ordered.push(w);
            }
            for &(rev, weight) in &split.weights {
                if Some(rev) != split.canary {
                    ordered.push((rev, weight));
                }
            }
            // Weights that do not sum to 10 000 are scaled to it.
            let total: u64 = ordered.iter().map(|(_, w)| u64::from(*w)).sum();
            if total > 0 {
                let mut acc: u64 = 0;
                for (rev, weight) in ordered {
                    if weight == 0 {
                        continue;
                    }
                    acc += u64::from(weight);
                    let end = (acc * u64::from(WHOLE)).div_ceil(total) as u32;
                    layout.push((end.min(WHOLE), group_of(rev).unwrap_or(NO_GROUP)));
                }
                if let Some(last) = layout.last_mut() {
                    last.0 = WHOLE;
                }
            }
        }
        let stable_group = table.stable.and_then(group_of);
        Routes {
            table,
            groups,
            layout,
            stickiness,
            canary_group,
            stable_group,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.table.upstreams
    }

    /// Choose an upstream for a request with `headers`, skipping `tried`.
    /// A request pinned by `X-Ferry-Revision` goes to that revision or
    /// nowhere: it never falls back to another one.
    ///
    /// Passive health: among the candidates (the pinned revision's, the
    /// revision the split chose, or all), one that is down is taken only if
    /// none is up; a split's revision with no candidate up gives way to any
    /// other revision's that is up. A service whose instances are all down
    /// is still tried (the split's choice first), not refused.
    pub(crate) fn pick<H: HeaderView + ?Sized>(
        &self,
        headers: &H,
        tried: &[Arc<Upstream>],
    ) -> Result<&Arc<Upstream>, NoRoute> {
        let upstreams = &self.table.upstreams;
        if let Some(pin) = self.pinned(headers)? {
            return self
                .pick_in(pin, tried)
                .or_else(|down| down.ok_or(NoRoute::Exhausted));
        }
        if upstreams.is_empty() {
            return Err(NoRoute::Exhausted);
        }
        let mut chosen_down = None;
        if let Some(group) = self.choose_group(headers) {
            match self.pick_in(group, tried) {
                Ok(u) => return Ok(u),
                Err(down) => chosen_down = down,
            }
        }
        // Plain round-robin over everything (also the fallback); when
        // everything left is down, the split's choice still comes first.
        let len = upstreams.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        first_up(
            (0..len).map(|i| &upstreams[start.wrapping_add(i) % len]),
            tried,
        )
        .or_else(|down| chosen_down.or(down).ok_or(NoRoute::Exhausted))
    }

    /// Round-robin inside `group`: see [`first_up`].
    fn pick_in(
        &self,
        group: usize,
        tried: &[Arc<Upstream>],
    ) -> Result<&Arc<Upstream>, Option<&Arc<Upstream>>> {
        let group = &self.groups[group];
        let len = group.members.len();
        let start = group.next.fetch_add(1, Ordering::Relaxed);
        first_up(
            (0..len).map(|i| &self.table.upstreams[group.members[start.wrapping_add(i) % len]]),
            tried,
        )
    }

    /// The group `X-Ferry-Revision` pins the request to, if it carries one
    /// (an empty value counts as none).
    fn pinned<H: HeaderView + ?Sized>(&self, headers: &H) -> Result<Option<usize>, NoRoute> {
        let name = X_FERRY_REVISION;
        let Some(value) = headers.value_of(&name).map(<[u8]>::trim_ascii) else {
            return Ok(None);
        };
        if value.is_empty() {
            return Ok(None);
        }
        let (pin, group) = if value.eq_ignore_ascii_case(b"canary") {
            (Pin::Canary, self.canary_group)
        } else if value.eq_ignore_ascii_case(b"stable") {
            (Pin::Stable, self.stable_group)
        } else {
            let rev = parse_u64(value).ok_or(NoRoute::BadPin)?;
            (
                Pin::Revision(rev),
                self.groups.iter().position(|g| g.revision == rev),
            )
        };
        group.map(Some).ok_or(NoRoute::Unavailable(pin))
    }

    /// The group (revision) an unpinned request should go to; `None` = any.
    fn choose_group<H: HeaderView + ?Sized>(&self, headers: &H) -> Option<usize> {
        if self.layout.is_empty() {
            return None;
        }
        let bucket = match self.sticky_key(headers) {
            Some(key) => bucket_of(key),
            None => random_bucket(),
        };
        let &(_, group) = self.layout.iter().find(|(end, _)| bucket < *end)?;
        (group != NO_GROUP).then_some(group)
    }

    fn sticky_key<'h, H: HeaderView + ?Sized>(&'h self, headers: &'h H) -> Option<&'h [u8]> {
        match &self.stickiness {
            Stickiness::None => None,
            Stickiness::Header(name) => headers.value_of(name).filter(|v| !v.is_empty()),
            Stickiness::Cookie(name) => cookie(headers, name.as_bytes()),
        }
    }
}

fn was_tried(tried: &[Arc<Upstream>], u: &Arc<Upstream>) -> bool {
    tried.iter().any(|t| Arc::ptr_eq(t, u))
}

/// The first of `candidates` not in `tried` that is up (`Ok`), else the
/// first not tried, which is down (`Err(Some)`), else `Err(None)`. One
/// relaxed load per candidate looked at (`Upstream::is_down`).
fn first_up<'a>(
    candidates: impl Iterator<Item = &'a Arc<Upstream>>,
    tried: &[Arc<Upstream>],
) -> Result<&'a Arc<Upstream>, Option<&'a Arc<Upstream>>> {
    let mut down = None;
    for u in candidates {
        if was_tried(tried, u) {
            continue;
        }
        if !u.is_down() {
            return Ok(u);
        }
        down = down.or(Some(u));
    }
    Err(down)
}

fn parse_u64(bytes: &[u8]) -> Option<u64> {
    if bytes.is_empty() || bytes.len() > 19 {
        return None;
    }
    bytes.iter().try_fold(0u64, |acc, &b| {
        b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0'))
    })
}

/// The value of cookie `name` in the request's `Cookie` headers.
fn cookie<'h, H: HeaderView + ?Sized>(headers: &'h H, name: &[u8]) -> Option<&'h [u8]> {
    for value in headers.values(&header::COOKIE) {
        for pair in value.split(|&b| b == b';') {
            let pair = pair.trim_ascii();
            if let Some(rest) = pair.strip_prefix(name)
                && let Some(v) = rest.strip_prefix(b"=")
            {
                let v = v.trim_ascii();
                let v = v
                    .strip_prefix(b"\"")
                    .and_then(|v| v.strip_suffix(b"\""))
                    .unwrap_or(v);
                if !v.is_empty() {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// A stable bucket in `0..10_000` for a sticky key: FNV-1a 64 with a
/// SplitMix64 finalizer, identical across processes, restarts and versions.
pub fn bucket_of(key: &[u8]) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in key {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (mix(h) % u64::from(WHOLE)) as u32
}

fn random_bucket() -> u32 {
    // Multiply-shift instead of modulo: unbiased enough and cheaper.
    (((random_u64() >> 32) * u64::from(WHOLE)) >> 32) as u32
}

#[cfg(test)]
mod unit {
    use super::*;
    use crate::stats::RevisionStats;
    use http::HeaderMap;
    use http::HeaderValue;

    fn ups(spec: &[(u64, usize)]) -> Vec<Arc<Upstream>> {
        let mut out = Vec::new();
        for &(rev, n) in spec {
            let stats = RevisionStats::new();
            for i in 0..n {
                let addr = format!("127.0.0.1:{}", 1000 + rev * 10 + i as u64);
                out.push(Upstream::new(
                    format!("r{rev}-{i}"),
                    rev,
                    addr.parse().unwrap(),
                    Arc::clone(&stats),
                ));
            }
        }
        out
    }

    fn routes(upstreams: &[Arc<Upstream>], split: Option<Split>) -> Routes {
        Routes::new(Arc::new(RoutingTable {
            upstreams: upstreams.to_vec(),
            split,
            stable: Some(1),
        }))
    }

    fn split(weights: &[(u64, u32)], stickiness: Stickiness, canary: Option<u64>) -> Split {
        Split {
            weights: weights.to_vec(),
            stickiness,
            canary,
        }
    }

    fn revision_of(r: &Routes, headers: &HeaderMap) -> u64 {
        r.pick(headers, &[]).unwrap().revision()
    }

    #[test]
    fn no_split_is_round_robin() {
        let u = ups(&[(1, 2), (2, 1)]);
        let r = routes(&u, None);
        let h = HeaderMap::new();
        let picked: Vec<String> = (0..6)
            .map(|_| r.pick(&h, &[]).unwrap().instance_id().to_string())
            .collect();
        assert_eq!(picked, ["r1-0", "r1-1", "r2-0", "r1-0", "r1-1", "r2-0"]);
        assert_eq!(
            routes(&[], None).pick(&h, &[]).err(),
            Some(NoRoute::Exhausted)
        );
    }

    #[test]
    fn shares_follow_weights_not_instance_counts() {
        // Revision 2 has 1 instance, revision 1 has 3: weights decide anyway.
        let u = ups(&[(1, 3), (2, 1)]);
        let r = routes(
            &u,
            Some(split(&[(2, 1000), (1, 9000)], Stickiness::None, Some(2))),
        );
        let h = HeaderMap::new();
        let mut counts = std::collections::HashMap::<String, u32>::new();
        for _ in 0..10_000 {
            *counts
                .entry(r.pick(&h, &[]).unwrap().instance_id().to_string())
                .or_default() += 1;
        }
        let canary = counts["r2-0"];
        assert!((800..=1200).contains(&canary), "{counts:?}");
        // Round-robin inside revision 1.
        for i in 0..3 {
            let n = counts[&format!("r1-{i}")];
            assert!((2700..=3300).contains(&n), "{counts:?}");
        }
        // Weight 0: no unforced traffic.
        let r = routes(
            &u,
            Some(split(&[(2, 0), (1, 10_000)], Stickiness::None, Some(2))),
        );
        assert!((0..1000).all(|_| revision_of(&r, &h) == 1));
    }

    #[test]
    fn sticky_users_never_flip_back_as_the_canary_grows() {
        let u = ups(&[(1, 2), (2, 2)]);
        let name = HeaderName::from_static("x-user");
        let users: Vec<HeaderMap> = (0..2000)
            .map(|i| {
                let mut h = HeaderMap::new();
                h.insert(
                    name.clone(),
                    HeaderValue::from_str(&format!("user-{i}")).unwrap(),
                );
                h
            })
            .collect();
        let mut on_canary = vec![false; users.len()];
        for canary_weight in [500, 2500, 5000] {
            // Stable listed first on purpose: the canary's range still comes first.
            let r = routes(
                &u,
                Some(split(
                    &[(1, 10_000 - canary_weight), (2, canary_weight)],
                    Stickiness::Header(name.clone()),
                    Some(2),
                )),
            );
            let mut count = 0;
            for (i, h) in users.iter().enumerate() {
                let first = revision_of(&r, h);
                // The same user always lands on the same revision.
                assert!((0..3).all(|_| revision_of(&r, h) == first));
                if on_canary[i] {
                    assert_eq!(first, 2, "user {i} flipped back at weight {canary_weight}");
                }
                on_canary[i] = first == 2;
                count += usize::from(first == 2);
            }
            let expected = users.len() * canary_weight as usize / 10_000;
            assert!(
                count.abs_diff(expected) <= users.len() / 20,
                "{count} users on the canary at {canary_weight}, expected about {expected}"
            );
        }
        // Requests without the key are drawn per request.
        let r = routes(
            &u,
            Some(split(
                &[(2, 5000), (1, 5000)],
                Stickiness::Header(name),
                Some(2),
            )),
        );
        let none = HeaderMap::new();
        let canary = (0..2000).filter(|_| revision_of(&r, &none) == 2).count();
        assert!((800..1200).contains(&canary), "{canary}");
    }

    #[test]
    fn cookie_stickiness_and_stable_buckets() {
        let u = ups(&[(1, 1), (2, 1)]);
        let r = routes(
            &u,
            Some(split(
                &[(2, 5000), (1, 5000)],
                Stickiness::Cookie("uid".into()),
                Some(2),
            )),
        );
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; uid=\"alice\"; b=2"),
        );
        let expected = if bucket_of(b"alice") < 5000 { 2 } else { 1 };
        assert!((0..20).all(|_| revision_of(&r, &h) == expected));
        // The bucket function never changes: these values are part of the
        // contract (users keep their assignment across restarts and upgrades).
        assert_eq!(bucket_of(b"alice"), bucket_of(b"alice"));
        assert_eq!(
            [bucket_of(b""), bucket_of(b"alice"), bucket_of(b"user-1")],
            [6203, 572, 7624]
        );
    }

    #[test]
    fn forced_revision_header_and_fallbacks() {
        let u = ups(&[(1, 2), (2, 1)]);
        let s = split(&[(2, 0), (1, 10_000)], Stickiness::None, Some(2));
        let r = routes(&u, Some(s.clone()));
        let mut h = HeaderMap::new();
        h.insert(X_FERRY_REVISION, HeaderValue::from_static("canary"));
        assert!((0..50).all(|_| revision_of(&r, &h) == 2));
        h.insert(X_FERRY_REVISION, HeaderValue::from_static("1"));
        assert!((0..50).all(|_| revision_of(&r, &h) == 1));
        // Forcing works without a split too.
        let plain = routes(&u, None);
        h.insert(X_FERRY_REVISION, HeaderValue::from_static("2"));
        assert!((0..50).all(|_| revision_of(&plain, &h) == 2));
        h.insert(X_FERRY_REVISION, HeaderValue::from_static("stable"));
        assert!((0..50).all(|_| revision_of(&plain, &h) == 1));
        h.insert(X_FERRY_REVISION, HeaderValue::from_static(" Canary "));
        assert!((0..50).all(|_| revision_of(&r, &h) == 2));
        // An empty value is no pin.
        h.insert(X_FERRY_REVISION, HeaderValue::from_static(""));
        assert!(r.pick(&h, &[]).is_ok());
        // A revision without upstreams, or no revision at all: refused,
        // never served by another revision.
        let refused = |r: &Routes, value: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(X_FERRY_REVISION, HeaderValue::from_static(value));
            r.pick(&h, &[]).err()
        };
        assert_eq!(
            refused(&r, "7"),
            Some(NoRoute::Unavailable(Pin::Revision(7)))
        );
        assert_eq!(refused(&r, "garbage"), Some(NoRoute::BadPin));
        assert_eq!(refused(&r, "-1"), Some(NoRoute::BadPin));
        assert_eq!(refused(&r, "99999999999999999999"), Some(NoRoute::BadPin));
        assert_eq!(
            refused(&plain, "canary"),
            Some(NoRoute::Unavailable(Pin::Canary))
        );
        let (status, body) = NoRoute::Unavailable(Pin::Revision(7))
            .pin_refusal()
            .unwrap();
        assert_eq!(status, http::StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("revision 7 has no instance")
        );
        assert_eq!(
            NoRoute::BadPin.pin_refusal().unwrap().0,
            http::StatusCode::BAD_REQUEST
        );
        assert_eq!(NoRoute::Exhausted.pin_refusal(), None);

        // The split's chosen revision has no upstream: any other serves; a
        // request pinned to it is refused.
        let only_stable = ups(&[(1, 2)]);
        let r = routes(
            &only_stable,
            Some(split(&[(2, 10_000), (1, 0)], Stickiness::None, Some(2))),
        );
        let none = HeaderMap::new();
        assert!((0..50).all(|_| revision_of(&r, &none) == 1));
        assert_eq!(
            refused(&r, "canary"),
            Some(NoRoute::Unavailable(Pin::Canary))
        );
        assert_eq!(
            refused(&r, "2"),
            Some(NoRoute::Unavailable(Pin::Revision(2)))
        );

        // A pinned retry stays inside its revision.
        let pinned = routes(&u, None);
        let mut h = HeaderMap::new();
        h.insert(X_FERRY_REVISION, HeaderValue::from_static("2"));
        let tried = vec![Arc::clone(&u[2])];
        assert_eq!(pinned.pick(&h, &tried).err(), Some(NoRoute::Exhausted));

        // Retries skip what was tried, inside the revision first, then anywhere.
        let r = routes(&u, Some(s));
        let tried = vec![Arc::clone(&u[0]), Arc::clone(&u[1])];
        assert_eq!(r.pick(&none, &tried).unwrap().revision(), 2);
        let all = u.clone();
        assert_eq!(r.pick(&none, &all).err(), Some(NoRoute::Exhausted));
    }

    #[test]
    fn down_upstreams_are_skipped_while_another_candidate_is_up() {
        let u = ups(&[(1, 3), (2, 2)]);
        let none = HeaderMap::new();
        let ids = |r: &Routes, h: &HeaderMap, n: usize| -> Vec<String> {
            (0..n)
                .map(|_| r.pick(h, &[]).unwrap().instance_id().to_string())
                .collect()
        };
        let plain = routes(&u, None);
        u[0].connect_failed();
        u[3].connect_failed();
        assert!(u[0].is_down() && u[3].is_down());
        let picked = ids(&plain, &none, 30);
        assert!(
            picked.iter().all(|id| id != "r1-0" && id != "r2-0"),
            "{picked:?}"
        );
        for id in ["r1-1", "r1-2", "r2-1"] {
            assert!(
                picked.iter().any(|p| p == id),
                "{id} never picked: {picked:?}"
            );
        }

        // Pinned: the revision's instances that are up; if none is, its
        // down ones all the same (never another revision's).
        let mut pinned = HeaderMap::new();
        pinned.insert(X_FERRY_REVISION, HeaderValue::from_static("2"));
        assert!(ids(&plain, &pinned, 10).iter().all(|id| id == "r2-1"));
        u[4].connect_failed();
        let picked = ids(&plain, &pinned, 10);
        assert!(picked.iter().all(|id| id.starts_with("r2-")), "{picked:?}");
        assert!(picked.iter().any(|id| id == "r2-0") && picked.iter().any(|id| id == "r2-1"));
        // Its retry moves to the other down instance, then gives up.
        let tried = vec![Arc::clone(&u[3])];
        assert_eq!(plain.pick(&pinned, &tried).unwrap().instance_id(), "r2-1");
        let tried = vec![Arc::clone(&u[3]), Arc::clone(&u[4])];
        assert_eq!(plain.pick(&pinned, &tried).err(), Some(NoRoute::Exhausted));

        // A split whose chosen revision is all down: another revision's
        // instance that is up serves.
        let canary_only = routes(
            &u,
            Some(split(&[(2, 10_000), (1, 0)], Stickiness::None, Some(2))),
        );
        assert!(
            ids(&canary_only, &none, 20)
                .iter()
                .all(|id| id.starts_with("r1-"))
        );

        // Everything down: still tried, in turn, rather than refused.
        for up in &u {
            up.connect_failed();
        }
        let picked = ids(&plain, &none, 10);
        let distinct: std::collections::HashSet<_> = picked.iter().collect();
        assert_eq!(distinct.len(), 5, "{picked:?}");
        assert_eq!(canary_only.pick(&none, &[]).unwrap().revision(), 2);
        // A successful exchange brings one back.
        u[2].exchange_succeeded();
        assert!(ids(&plain, &none, 10).iter().all(|id| id == "r1-2"));
    }
}
