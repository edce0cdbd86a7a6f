//! The route table: the one place a route is described: its path, the methods it allows
//! (which also make its `Allow` header) and its metric label.

use crate::http::Method;

/// Generates [`Route`] and its table from one list: variant, path, allowed methods (as sent in
/// `Allow`; GET implies HEAD, which is listed too).
macro_rules! route_table {
    ($($route:ident => $path:literal, [$first:ident $(, $method:ident)*];)+) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Route {
            $($route,)+
        }

        impl Route {
            /// Every route, in table order.
            pub const ALL: &'static [Route] = &[$(Route::$route,)+];

            /// Metric label of each route index, then [`Route::UNMATCHED_LABEL`] for requests
            /// no route matched ([`Route::metric_index`] of `None`).
            pub const METRIC_LABELS: &'static [&'static str] =
                &[$($path,)+ Route::UNMATCHED_LABEL];

            /// The route of a path: one of the table's paths exactly, or a named counter's
            /// (any path under [`Route::COUNTERS_PREFIX`]; the endpoint checks the name).
            pub fn from_path(path: &[u8]) -> Option<Route> {
                if path.starts_with(Route::COUNTERS_PREFIX.as_bytes()) {
                    return Some(Route::Counters);
                }
                match path {
                    $(p if p == $path.as_bytes() => Some(Route::$route),)+
                    _ => None,
                }
            }

            pub const fn path(self) -> &'static str {
                match self {
                    $(Route::$route => $path,)+
                }
            }

            /// The value of the `Allow` header (RFC 9110 §10.2.1) on a 405 from this route.
            pub const fn allow(self) -> &'static str {
                match self {
                    $(Route::$route => concat!(stringify!($first) $(, ", ", stringify!($method))*),)+
                }
            }

            pub fn allows(self, method: Method) -> bool {
                match self {
                    $(Route::$route => [route_table!(@method $first) $(, route_table!(@method $method))*]
                        .contains(&method),)+
                }
            }
        }
    };
    (@method GET) => { Method::Get };
    (@method HEAD) => { Method::Head };
    (@method POST) => { Method::Post };
    (@method DELETE) => { Method::Delete };
}

route_table! {
    Counter => "/api/v1/counter", [GET, HEAD, POST];
    // Matched by its prefix (see `from_path`); the path here is the metric label.
    Counters => "/api/v1/counters/{name}", [GET, HEAD, POST];
    GetValue => "/get_value", [POST];
    Health => "/api/v1/system/health", [GET, HEAD];
    Ready => "/api/v1/system/ready", [GET, HEAD];
    Metrics => "/metrics", [GET, HEAD];
    AdminKvReload => "/admin/kv/reload", [POST];
}

impl Route {
    /// The metric label of requests that matched no route.
    pub const UNMATCHED_LABEL: &'static str = "other";

    /// Where named counters' paths start; the rest is the name.
    pub const COUNTERS_PREFIX: &'static str = "/api/v1/counters/";

    /// Index into [`Route::METRIC_LABELS`].
    pub fn metric_index(route: Option<Route>) -> usize {
        route.map_or(Route::ALL.len(), |r| r as usize)
    }
}
