//! What the Redis test suites (`redis`, `redis_cluster`) share.

/// The guide's least-privilege ACL, read from the guide itself (so that
/// the two cannot drift apart): the grants of its `ACL SETUSER traffik`
/// block, and the text that follows the block.
pub fn readme_acl() -> (Vec<String>, &'static str) {
    let readme = include_str!("../../docs/guide/4-redis.md");
    let start = readme
        .find("ACL SETUSER traffik")
        .expect("the README's ACL block");
    let end = start + readme[start..].find("```").expect("its end");
    let commands: Vec<String> = readme[start..end]
        .split_whitespace()
        .filter(|word| word.starts_with('+'))
        .map(str::to_owned)
        .collect();
    assert!(commands.len() > 10, "{commands:?}");
    (commands, &readme[end..])
}
