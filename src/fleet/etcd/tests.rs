use super::*;

#[tokio::test]
async fn a_watch_stream_without_line_breaks_ends_instead_of_growing() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut head = [0u8; 4096];
        let _ = s.read(&mut head).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
            .await;
        let chunk = [b'a'; 64 * 1024];
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        // Endless: only the reader can end it.
        while s.write_all(&frame).await.is_ok() {}
    });
    let etcd = Etcd::new(Endpoints {
        urls: vec![format!("http://{addr}")],
        credentials: None,
        tls: None,
    });
    let mut lines = etcd.watch("k", 1).await.expect("watch");
    match lines.next().await {
        Some(Err(EtcdError::Garbled(why))) => assert!(why.contains("longer than"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(lines.buf.len() <= MAX_MESSAGE + 64 * 1024);
}

#[test]
fn watch_messages_read_as_the_gateway_sends_them() {
    let created: Value =
        serde_json::from_str(r#"{"result":{"header":{"revision":"12"},"created":true}}"#)
            .expect("json");
    assert!(matches!(read_watch(&created), Ok(Watched::Quiet)));
    let events: Value = serde_json::from_str(
        r#"{"result":{"header":{"revision":"13"},"events":[{"kv":{"key":"Zm9v","mod_revision":"13","value":"djM="}},{"type":"DELETE","kv":{"key":"Zm9v","mod_revision":"14"}}]}}"#,
    )
    .expect("json");
    match read_watch(&events) {
        Ok(Watched::Events(e)) => assert_eq!(
            e,
            [
                Event::Put(Kv {
                    value: b"v3".to_vec(),
                    mod_revision: 13
                }),
                Event::Delete(14)
            ]
        ),
        other => panic!("{other:?}"),
    }
    let compacted: Value =
        serde_json::from_str(r#"{"result":{"header":{},"canceled":true,"compact_revision":"14"}}"#)
            .expect("json");
    assert!(matches!(read_watch(&compacted), Ok(Watched::Ended(_))));
    let closing: Value = serde_json::from_str(
        r#"{"error":{"grpc_code":14,"http_code":503,"message":"transport is closing"}}"#,
    )
    .expect("json");
    assert!(matches!(read_watch(&closing), Ok(Watched::Ended(m)) if m == "transport is closing"));
}
