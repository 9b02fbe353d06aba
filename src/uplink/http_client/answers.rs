//! What an HTTP error status carries for the layers above: a JSON-RPC answer in a 4xx body
//! (MCP 2026-07-28), or a `Retry-After` to honour.

use std::time::Duration;

use http::{Response, StatusCode, header};
use hyper::body::Incoming;
use rmcp::model::{ClientJsonRpcMessage, ClientRequest, ErrorData, ServerJsonRpcMessage};

/// `Retry-After` of a 429 or 503 answer: delay-seconds or an HTTP-date (RFC 9110 §10.2.3).
pub(super) fn retry_after(response: &Response<Incoming>) -> Option<Duration> {
    if !matches!(
        response.status(),
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        return None;
    }
    parse_retry_after(response.headers().get(header::RETRY_AFTER)?.to_str().ok()?)
}

pub(super) fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

/// The JSON-RPC answer a 4xx carries, for rmcp's lifecycle and the relay to act on.
///
/// MCP 2026-07-28 (Basic/Transports, Streamable HTTP) sends JSON-RPC errors with 4xx statuses
/// (-32020 header mismatch, -32021 missing capability, -32022 unsupported protocol version,
/// with `data.supported`). A POST carries one request, so the error answers it: its `id` is
/// set to the request's (servers and middleware may send none or a placeholder). A 4xx to
/// `server/discover` without such a body comes from a legacy server or middleware and becomes
/// an `invalid_request` error, so rmcp's `Auto` lifecycle falls back to `initialize` (as
/// rmcp's own `legacy_discover_response`, which is crate-private). 401/403 (authorization) and
/// 429 (throttling, see [`HttpClientError::retry_after`]) keep their status; so do 5xx and
/// answers to notifications, which nothing waits on.
pub(super) fn error_answer(
    msg: &ClientJsonRpcMessage,
    session_attached: bool,
    status: StatusCode,
    body: &str,
) -> Option<ServerJsonRpcMessage> {
    let ClientJsonRpcMessage::Request(request) = msg else {
        return None;
    };
    if !status.is_client_error()
        || matches!(
            status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::TOO_MANY_REQUESTS
        )
    {
        return None;
    }
    let error = match serde_json::from_str::<ServerJsonRpcMessage>(body) {
        Ok(ServerJsonRpcMessage::Error(error)) => error.error,
        _ if !session_attached && matches!(request.request, ClientRequest::DiscoverRequest(_)) => {
            let text = format!("server/discover rejected with HTTP {status}: {body}");
            ErrorData::invalid_request(text, None)
        }
        _ => return None,
    };
    Some(ServerJsonRpcMessage::error(error, Some(request.id.clone())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn request(method: &str) -> ClientJsonRpcMessage {
        serde_json::from_value(json!({"jsonrpc": "2.0", "id": 4, "method": method,
            "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}}}))
        .unwrap()
    }

    fn error_code(answer: Option<ServerJsonRpcMessage>) -> Option<(i32, Option<String>)> {
        match answer? {
            ServerJsonRpcMessage::Error(e) => Some((e.error.code.0, e.id.map(|id| id.to_string()))),
            _ => None,
        }
    }

    #[test]
    fn a_4xx_json_rpc_body_answers_the_request_it_was_posted_with() {
        let body = r#"{"jsonrpc":"2.0","id":"server-error","error":{"code":-32022,"message":"no","data":{"supported":["2025-11-25"]}}}"#;
        let list = request("tools/list");
        let answer = error_answer(&list, false, StatusCode::BAD_REQUEST, body);
        assert_eq!(error_code(answer), Some((-32022, Some("4".into()))));
        // A legacy server's plain 4xx to server/discover: invalid_request, so rmcp falls back.
        let discover = request("server/discover");
        let text = "Unexpected message, expect initialize request";
        let answer = error_answer(&discover, false, StatusCode::UNPROCESSABLE_ENTITY, text);
        assert_eq!(error_code(answer), Some((-32600, Some("4".into()))));
        // Kept as HTTP errors: a plain 4xx to anything else, a discover within a session,
        // authorization, throttling, 5xx, and a notification.
        let status =
            |m: &ClientJsonRpcMessage, s: StatusCode, b: &str| error_answer(m, false, s, b);
        assert!(status(&list, StatusCode::BAD_REQUEST, text).is_none());
        assert!(error_answer(&discover, true, StatusCode::NOT_FOUND, text).is_none());
        for code in [401, 403, 429, 500, 503] {
            let code = StatusCode::from_u16(code).unwrap();
            assert!(status(&list, code, body).is_none(), "{code}");
        }
        let note: ClientJsonRpcMessage = serde_json::from_value(
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .unwrap();
        assert!(status(&note, StatusCode::BAD_REQUEST, body).is_none());
    }
}
