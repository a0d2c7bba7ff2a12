//! Small helpers shared by the fault, failover and protocol tests.

/// The largest of `f` over `items` (e.g. the longest call), or the default when empty.
pub fn max_of<T, D: Ord + Default>(items: impl IntoIterator<Item = T>, f: impl FnMut(T) -> D) -> D {
    items.into_iter().map(f).max().unwrap_or_default()
}
