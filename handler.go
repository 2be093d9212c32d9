package redisleak

import (
	"encoding/json"
	"net/http"
)

// Handler returns an http.Handler for a health endpoint: GET (and HEAD)
// answer 200 with application/json: the Stats fields plus "leaks", the
// current leaks (Scan's result, without reporting anything again). Sites
// and stacks are left out unless Options.HandlerShowSites is set. Other
// methods get 405.
func (t *Tracker) Handler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
			return
		}
		body := struct {
			Stats
			Leaks []Leak       `json:"leaks"`
			Auto  []autoHolder `json:"autoLongLived"`
		}{Stats: t.Stats(), Leaks: t.currentLeaks(), Auto: t.autoHolders()}
		if !t.opts.HandlerShowSites {
			for i := range body.Leaks {
				body.Leaks[i].Site = ""
				body.Leaks[i].Stack = nil
			}
		}
		if body.Leaks == nil {
			body.Leaks = []Leak{}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		if r.Method == http.MethodHead {
			return
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(body)
	})
}

// currentLeaks returns the holds over their threshold without reporting;
// sites are resolved only when they are shown.
func (t *Tracker) currentLeaks() []Leak {
	sites := 0
	if t.opts.HandlerShowSites {
		sites = -1
	}
	return t.listHolds(func(v holdView) bool { return v.leaked }, sites, true)
}

// autoHolder is a hold long-lived by behaviour, as the health JSON lists it.
type autoHolder struct {
	Kind      Kind    `json:"kind"`
	Owner     string  `json:"owner,omitempty"`
	Site      string  `json:"site,omitempty"`
	HeldForMs float64 `json:"heldForMs"`
	IdleForMs float64 `json:"idleForMs"`
	Hint      string  `json:"hint"`
}

// autoHolders lists the holds long-lived by behaviour (Options.AutoLongLived).
func (t *Tracker) autoHolders() []autoHolder {
	out := []autoHolder{}
	if !t.opts.AutoLongLived {
		return out
	}
	sites := 0
	if t.opts.HandlerShowSites {
		sites = -1
	}
	for _, h := range t.listHolds(func(v holdView) bool { return v.by == LongLivedAuto }, sites, false) {
		out = append(out, autoHolder{
			Kind: h.Kind, Owner: h.Owner, Site: h.Site,
			HeldForMs: ms(h.HeldFor), IdleForMs: ms(h.IdleFor),
			Hint: "detected by behaviour: mark it with redisleak.WithLongLived at its site to make this explicit",
		})
	}
	return out
}
