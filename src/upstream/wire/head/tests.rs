use http::HeaderName;

use super::*;

fn answer(wire: &[u8], method: Method) -> Result<Option<Answer>, Invalid> {
    parse(&mut BytesMut::from(wire), &method, &Hide::default())
}

#[test]
fn a_request_head_is_written_in_origin_form_with_its_fields() {
    let mut req = http::Request::post("/a?b=1")
        .header("host", "example.com")
        .header("x-one", "1")
        .body(())
        .unwrap();
    req.headers_mut()
        .append("x-one", HeaderValue::from_static("2"));
    let (parts, ()) = req.into_parts();
    let mut out = Vec::new();
    let xff = HeaderValue::from_static("10.0.0.1");
    encode(
        &mut out,
        &parts,
        &[("x-forwarded-for", &xff)],
        sending(&parts, false),
    );
    assert_eq!(
        String::from_utf8(out.clone()).unwrap(),
        "POST /a?b=1 HTTP/1.1\r\nhost: example.com\r\nx-one: 1\r\nx-one: 2\r\nx-forwarded-for: 10.0.0.1\r\ncontent-length: 0\r\n\r\n"
    );
    encode(&mut out, &parts, &[], sending(&parts, true));
    assert!(
        String::from_utf8(out)
            .unwrap()
            .ends_with("transfer-encoding: chunked\r\n\r\n")
    );
}

#[test]
fn answers_are_framed_as_rfc_9112_says() {
    let a = answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (a.status, a.framing, a.keep_alive),
        (StatusCode::OK, Framing::Length(5), true)
    );
    let a = answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert_eq!(a.framing, Framing::Done);
    let a = answer(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(a.framing, Framing::Done);
    let a = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert_eq!(a.framing, Framing::Done, "no body, nothing to undo");
    let a = answer(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (a.framing, a.keep_alive),
        (Framing::Chunked(Chunk::Size), false)
    );
    let a = answer(b"HTTP/1.1 200 OK\r\n\r\n", Method::GET)
        .unwrap()
        .unwrap();
    assert_eq!((a.framing, a.keep_alive), (Framing::Close, false));
    let a = answer(
        b"HTTP/1.1 200 OK\r\nContent-Length: 7, 7\r\nConnection: close\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!((a.framing, a.keep_alive), (Framing::Length(7), false));
    let a = answer(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", Method::GET)
        .unwrap()
        .unwrap();
    assert_eq!((a.version, a.keep_alive), (Version::HTTP_10, false));
    let a = answer(
        b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\nConnection: Keep-Alive\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert!(a.keep_alive);
    // HTTP/1.0 with Transfer-Encoding: faulty framing, read as chunked, the connection closed.
    let a = answer(
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: Keep-Alive\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (a.framing, a.keep_alive),
        (Framing::Chunked(Chunk::Size), false)
    );
    let a = answer(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
        Method::GET,
    )
    .unwrap()
    .unwrap();
    assert_eq!((a.status.as_u16(), a.keep_alive), (101, false));
}

#[test]
fn an_upstream_s_set_cookie_for_the_sticky_cookie_is_not_passed_on() {
    let wire = b"HTTP/1.1 200 OK\r\nSet-Cookie: uid=pinned; Max-Age=9999\r\nSet-Cookie: cart=3\r\nset-cookie:  uid = other\r\nContent-Length: 0\r\n\r\n";
    let own = Hide {
        fields: Box::new([]),
        own_cookie: Some(b"uid".as_slice().into()),
    };
    let a = parse(&mut BytesMut::from(&wire[..]), &Method::GET, &own)
        .unwrap()
        .unwrap();
    let values: Vec<&[u8]> = a.fields.iter().map(|(_, value)| value).collect();
    assert_eq!(values, [&b"cart=3"[..], b"0"]);
    // Where the app sets the cookie itself, every one goes on.
    let a = answer(&wire[..], Method::GET).unwrap().unwrap();
    assert_eq!(a.fields.iter().count(), 4);
}

#[test]
fn hop_by_hop_named_and_hidden_fields_are_not_passed_on() {
    let wire = b"HTTP/1.1 200 OK\r\nX-Secret: 1\r\nConnection: keep-alive, X-Secret\r\nKeep-Alive: timeout=5\r\nX-App-Version: 2.1\r\nTrailer: x\r\nServer: s\r\nContent-Length: 0\r\n\r\n";
    let hide = Hide {
        fields: Box::new([HeaderName::from_static("x-app-version")]),
        own_cookie: None,
    };
    let a = parse(&mut BytesMut::from(&wire[..]), &Method::GET, &hide)
        .unwrap()
        .unwrap();
    let names: Vec<&[u8]> = a.fields.iter().map(|(name, _)| name).collect();
    assert_eq!(
        names,
        [&b"Server"[..], b"Content-Length"],
        "as the upstream wrote them"
    );
    let map = a.fields.into_map();
    let names: Vec<&str> = map.keys().map(HeaderName::as_str).collect();
    assert_eq!(names, ["server", "content-length"]);
    assert!(a.keep_alive);
    let wire = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    let a = answer(&wire[..], Method::GET).unwrap().unwrap();
    assert!(
        a.fields.is_empty() && a.fields.length.is_none(),
        "a length beside chunked is not passed on"
    );
    assert!(!a.keep_alive);
}

#[test]
fn interim_answers_are_skipped_and_partial_heads_wait() {
    let mut buf = BytesMut::from(&b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"[..]);
    let a = parse(&mut buf, &Method::POST, &Hide::default())
        .unwrap()
        .unwrap();
    assert_eq!(a.status, StatusCode::CREATED);
    assert_eq!(&buf[..], b"ok");
    let mut buf = BytesMut::from(&b"HTTP/1.1 200 OK\r\nContent-Le"[..]);
    assert!(
        parse(&mut buf, &Method::GET, &Hide::default())
            .unwrap()
            .is_none()
    );
}

#[test]
fn malformed_answers_are_refused() {
    for wire in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 5, 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
        b"HTTP/1.1 099 Odd\r\n\r\n",
        b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 999 Odd\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        // A coding ramp does not undo (it would pass the body on still coded): a 502.
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
    ] {
        assert!(
            answer(wire, Method::GET).is_err(),
            "{:?}",
            String::from_utf8_lossy(wire)
        );
    }
    let many = [
        b"HTTP/1.1 200 OK\r\n".as_slice(),
        &b"a: b\r\n".repeat(101),
        b"\r\n",
    ]
    .concat();
    assert_eq!(
        answer(&many, Method::GET).unwrap_err(),
        Invalid("too many header fields")
    );
    let long = [b"HTTP/1.1 200 OK\r\nx: ".as_slice(), &[b'a'; MAX_HEAD]].concat();
    assert_eq!(
        answer(&long, Method::GET).unwrap_err(),
        Invalid("head too large")
    );
}

#[test]
fn a_length_the_connection_field_names_is_not_claimed_as_passed_on() {
    for wire in [
        &b"HTTP/1.1 200 OK\r\nConnection: Content-Length\r\nContent-Length: 2\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: content-length\r\n\r\n",
    ] {
        let a = answer(wire, Method::GET).unwrap().unwrap();
        assert_eq!(a.framing, Framing::Length(2));
        assert!(
            a.fields.is_empty() && a.fields.length.is_none(),
            "{:?}",
            a.fields
        );
    }
}

#[test]
fn repeated_lengths_go_on_as_one_and_a_204_carries_none() {
    let lengths = |wire: &[u8], method: Method| {
        let a = answer(wire, method).unwrap().unwrap();
        let map = a.fields.into_map();
        let values: Vec<_> = map.get_all(CONTENT_LENGTH).iter().cloned().collect();
        (a.framing, values)
    };
    let two = HeaderValue::from_static("2");
    assert_eq!(
        lengths(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n",
            Method::GET
        ),
        (Framing::Length(2), vec![two.clone()])
    );
    assert_eq!(
        lengths(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2, 2\r\n\r\n",
            Method::GET
        ),
        (Framing::Length(2), vec![two.clone()])
    );
    assert_eq!(
        lengths(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n",
            Method::HEAD
        ),
        (Framing::Done, vec![two])
    );
    assert_eq!(
        lengths(
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
            Method::GET
        ),
        (Framing::Done, vec![])
    );
}
