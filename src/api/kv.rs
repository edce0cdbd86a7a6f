//! `POST /get_value` with `{"key": "<UUID v4>"}`: 200 `{"value": ...}`, 404 for a key not in
//! the dataset, 422 for a key that is not a UUID v4, 400 for a body that is not such an
//! object.

use crate::http::Status;
use crate::kv::write_json_string;

use super::app::App;
use super::lookup::Lookup;
use super::response::{message, Response};

/// `POST /get_value`.
pub fn get_value(app: &App, body: &mut [u8], out: &mut Vec<u8>) -> Response {
    app.lookup(body, |lookup| match lookup {
        Lookup::Found(value) => {
            out.extend_from_slice(b"{\"value\":");
            write_json_string(out, value);
            out.push(b'}');
            Response::json(Status::Ok)
        }
        Lookup::NotFound => message(out, Status::NotFound, "key not found"),
        Lookup::NotUuidV4 => message(out, Status::UnprocessableContent, "key is not a UUID v4"),
        Lookup::BadRequest(why) => message(out, Status::BadRequest, why),
    })
}
