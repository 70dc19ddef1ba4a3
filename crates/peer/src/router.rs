//! The root's per-newcomer routing as a sans-IO state machine (`docs/protocol.md`,
//! sections "Requests at the root" and "Handshake").
//!
//! Every root-bound request of one newcomer (its offer, then its trickled candidates,
//! all with the same `origin`) must reach whoever handles that newcomer. [`Router`] maps
//! origins to handlers and decides, for each request, whether it starts a new newcomer,
//! goes to an existing handler, or is a late signal to drop quietly: a candidate whose
//! origin nobody handles any more (its answerer connected, or the application let the
//! newcomer go). Only an offer can start a newcomer, so late candidates never create
//! phantom newcomers, the tree overlay's bug (`docs/protocol.md`, "Tree overlay bugs").

use std::collections::HashMap;

/// A handler the router can ask whether it still listens.
pub(crate) trait Handler {
    /// Whether nobody will read what is routed here any more.
    fn is_gone(&self) -> bool;
}

/// What to do with one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Route<'a, H> {
    /// An offer from an origin nobody handles: start a new newcomer, then
    /// [`Router::insert`] its handler.
    New,
    /// Give it to this handler.
    Existing(&'a H),
    /// Nobody handles this origin and it is not an offer: drop it quietly.
    Late,
}

/// Origins of the newcomers being handled, and their handlers.
#[derive(Debug)]
pub(crate) struct Router<H> {
    routes: HashMap<String, H>,
}

impl<H: Handler> Router<H> {
    /// An empty router.
    pub(crate) fn new() -> Self {
        Self {
            routes: HashMap::new(),
        }
    }

    /// Where the request from `origin` goes. Handlers that are gone are forgotten here.
    pub(crate) fn route(&mut self, origin: &str, is_offer: bool) -> Route<'_, H> {
        if self.routes.get(origin).is_some_and(Handler::is_gone) {
            self.routes.remove(origin);
        }
        if self.routes.contains_key(origin) {
            self.routes.get(origin).map_or(Route::Late, Route::Existing)
        } else if is_offer {
            // New newcomers are rare next to candidates: prune here so origins whose
            // handlers went away without another request do not pile up.
            self.routes.retain(|_, h| !h.is_gone());
            Route::New
        } else {
            Route::Late
        }
    }

    /// Records the handler of a newcomer that [`Router::route`] called new.
    pub(crate) fn insert(&mut self, origin: String, handler: H) {
        self.routes.insert(origin, handler);
    }

    /// Number of origins still routed.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.routes.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[derive(Debug, Clone, PartialEq, Eq)]
    struct Fake(u32, Rc<Cell<bool>>);

    impl Handler for Fake {
        fn is_gone(&self) -> bool {
            self.1.get()
        }
    }

    fn fake(n: u32) -> (Fake, Rc<Cell<bool>>) {
        let gone = Rc::new(Cell::new(false));
        (Fake(n, gone.clone()), gone)
    }

    #[test]
    fn offer_starts_a_newcomer_and_candidates_follow_it() {
        let mut router = Router::new();
        assert_eq!(router.route("a", true), Route::New);
        let (h, _) = fake(1);
        router.insert("a".into(), h);
        for _ in 0..3 {
            assert!(matches!(
                router.route("a", false),
                Route::Existing(Fake(1, _))
            ));
        }
        // A second newcomer is independent.
        assert_eq!(router.route("b", true), Route::New);
        let (h, _) = fake(2);
        router.insert("b".into(), h);
        assert!(matches!(
            router.route("b", false),
            Route::Existing(Fake(2, _))
        ));
        assert!(matches!(
            router.route("a", false),
            Route::Existing(Fake(1, _))
        ));
        assert_eq!(router.len(), 2);
    }

    #[test]
    fn candidates_of_unknown_origins_are_late() {
        let mut router: Router<Fake> = Router::new();
        assert_eq!(router.route("x", false), Route::Late);
        assert_eq!(router.len(), 0);
    }

    #[test]
    fn finished_newcomers_drop_late_candidates_without_phantoms() {
        let mut router = Router::new();
        assert_eq!(router.route("a", true), Route::New);
        let (h, gone) = fake(1);
        router.insert("a".into(), h);
        gone.set(true);
        assert_eq!(router.route("a", false), Route::Late);
        assert_eq!(router.route("a", false), Route::Late);
        assert_eq!(router.len(), 0);
    }

    #[test]
    fn duplicate_offer_goes_to_the_existing_handler() {
        let mut router = Router::new();
        assert_eq!(router.route("a", true), Route::New);
        let (h, _) = fake(1);
        router.insert("a".into(), h);
        assert!(matches!(
            router.route("a", true),
            Route::Existing(Fake(1, _))
        ));
    }

    #[test]
    fn new_offers_prune_gone_handlers() {
        let mut router = Router::new();
        let mut flags = Vec::new();
        for (n, origin) in ["a", "b", "c"].into_iter().enumerate() {
            assert_eq!(router.route(origin, true), Route::New);
            let (h, gone) = fake(u32::try_from(n).expect("small"));
            router.insert(origin.into(), h);
            flags.push(gone);
        }
        flags[0].set(true);
        flags[2].set(true);
        assert_eq!(router.route("d", true), Route::New);
        assert_eq!(router.len(), 1);
    }
}
