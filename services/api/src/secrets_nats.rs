//! Secrets for NATS runtimes: core NATS request/reply on
//! `exo.v1.<ns>.secrets.get` (no stream: secrets are never persisted on
//! NATS). The request carries the API key in the `Exo-Api-Key` header (the
//! HTTP API's key, the same authorization as `GET …/state/{id}/secrets`)
//! and `{"state_id": "<24 hex>"}`; the reply is `{"status": 200, "secrets":
//! {name: value}}`, or `{"status": <HTTP status>, "detail": "<why>"}` with
//! the HTTP endpoint's status and message. Every `api` replica serves it
//! (queue group `exo-api`).

use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::AppState;
use crate::error::ApiError;

/// Serves secrets requests until `shutdown`.
pub async fn serve(state: AppState, shutdown: CancellationToken) {
    let client = state.engine.bus.client().clone();
    let c2 = client.clone();
    let subject = exo_types::subjects::SECRETS_SUBJECTS;
    exo_bus::serve_requests(client, subject, "exo-api", shutdown, move |msg| {
        let (state, client) = (state.clone(), c2.clone());
        async move {
            let Some(reply) = msg.reply.clone() else {
                return;
            };
            let body = answer(&state, &msg).await;
            if let Err(error) = client.publish(reply, body.to_string().into()).await {
                tracing::warn!(%error, "Could not answer a secrets request.");
            }
        }
    })
    .await;
}

async fn answer(state: &AppState, msg: &async_nats::Message) -> Value {
    let key = msg
        .headers
        .as_ref()
        .and_then(|h| h.get(exo_types::messages::HEADER_API_KEY))
        .map(|k| k.as_str().as_bytes().to_vec());
    let principal = match key {
        Some(k) => state.principal(&k).await,
        None => Ok(None),
    };
    let principal = match principal {
        Ok(Some(p)) => p,
        Ok(None) => return json!({"status": 401, "detail": "Invalid API key"}),
        Err(error) => {
            tracing::error!(%error, "Could not read API keys.");
            return json!({"status": 500, "detail": "Internal server error"});
        }
    };
    let Some(ns) = exo_types::subjects::namespace_of(&msg.subject) else {
        return json!({"status": 400, "detail": "no namespace in the subject"});
    };
    if let Err(why) = principal.check(Some(ns), crate::keys::Needs::Runtime) {
        return json!({"status": 403, "detail": why});
    }
    let Some(id) = serde_json::from_slice::<Value>(&msg.payload)
        .ok()
        .and_then(|v| v["state_id"].as_str().map(str::to_string))
    else {
        return json!({"status": 400, "detail": "the request must be {\"state_id\": \"<id>\"}"});
    };
    match crate::routes::states::secrets_of(state, ns, &id).await {
        Ok(secrets) => json!({"status": 200, "secrets": secrets}),
        Err(ApiError::Http(status, detail)) => json!({"status": status.as_u16(), "detail": detail}),
        Err(other) => {
            tracing::error!(error = ?other, exo.state_id = %id, "A secrets request failed.");
            json!({"status": 500, "detail": "Internal server error"})
        }
    }
}
