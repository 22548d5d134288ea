use parley_testkit::{Client, Stack};

#[tokio::test]
async fn missing_token_is_unauthenticated() -> anyhow::Result<()> {
    let stack = Stack::start().await?;
    let c = Client::new(&stack.url(0), "alice");
    let (s, b, _) = c.raw("GET", "/v1/channels", None, None).await?;
    assert_eq!(s, 401);
    assert_eq!(b["error"]["code"], "unauthenticated");
    Ok(())
}
