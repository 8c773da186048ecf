package failpoint

import "strings"

// Action is what a failpoint does when it fires; a Point's Actions are
// a set of them.
type Action uint8

const (
	// Error makes the site return an error (errors.Is ErrInjected): only
	// a site that calls Inject can.
	Error Action = 1 << iota
	// Sleep makes the site wait, then go on.
	Sleep
	// Kill makes the process die by SIGKILL at the site, as a kill -9
	// from outside would leave things.
	Kill
)

// hitActions are what a site that calls Hit can do; a site that calls
// Inject can also fail.
const hitActions = Sleep | Kill

func (a Action) String() string {
	var names []string
	for _, n := range []struct {
		a    Action
		name string
	}{{Error, "error"}, {Sleep, "sleep"}, {Kill, "kill"}} {
		if a&n.a != 0 {
			names = append(names, n.name)
		}
	}
	return strings.Join(names, ", ")
}

// Point is one named failpoint.
type Point struct {
	// Name is what the configuration and the site call it:
	// AREA-[before|after-]STEP, lowercase, words joined by "-", the area
	// the package or part it is in.
	Name string
	// Actions are what it can do: Sleep|Kill where the site calls Hit,
	// Error too where it calls Inject (fewer where one would do nothing).
	Actions Action
	// Doc says where it is and what firing there leaves.
	Doc string
}

// catalogue is every failpoint, by area. A site with a name not here is
// an error of TestSitesAreCatalogued; so is a point with no site.
var catalogue = []Point{
	// The store (internal/store: bbolt and etcd alike). "before": the
	// change is not made; "after": it is made, and the caller never
	// learns (an error is then an ambiguous one, as a lost answer from
	// etcd is).
	{"store-before-commit", Error | Sleep | Kill, "Store.Commit, before its transaction: no generation committed"},
	{"store-after-commit", Error | Sleep | Kill, "Store.Commit, after its transaction: the generation committed and current, the caller not told"},
	{"store-before-set-current", Error | Sleep | Kill, "Store.SetCurrent (rollback), before its transaction: the current generation unchanged"},
	{"store-after-set-current", Error | Sleep | Kill, "Store.SetCurrent (rollback), after its transaction: the current generation moved, the caller not told"},
	{"store-before-set-confirm", Error | Sleep | Kill, "Store.SetConfirm (a confirm window's end, a switch back), before its transaction: nothing recorded"},
	{"store-after-set-confirm", Error | Sleep | Kill, "Store.SetConfirm, after its transaction: the window's end (and a switch back) recorded, the caller not told"},
	{"store-before-txn", Error | Sleep | Kill, "Store.Txn (and PutRecord, DeleteRecord), before its transaction: no record written"},
	{"store-after-txn", Error | Sleep | Kill, "Store.Txn (and PutRecord, DeleteRecord), after its transaction: the records written, the caller not told"},
	{"store-before-delete", Error | Sleep | Kill, "Store.Delete (gc), before its first transaction: no generation deleted"},
	{"store-after-delete", Error | Sleep | Kill, "Store.Delete (gc), after its last transaction: the generations deleted, the caller not told"},
	{"store-before-drop-env", Error | Sleep | Kill, "Store.DropEnv (env rm, a preview's expiry), before its first transaction: the environment kept"},
	{"store-after-drop-env", Error | Sleep | Kill, "Store.DropEnv, after its last transaction: the environment gone, the caller not told"},
	{"store-watch-deliver", Error | Sleep | Kill, "Store.Watch, before each event is delivered: sleep delays it; error ends the watch with that error (the watcher reads again)"},
	{"store-before-load-batch", Error | Sleep | Kill, "etcd's Load (the move from bbolt at a first start on etcd), before each of its transactions — the clearing, the batches, the sequence last: a move cut short, which the next start clears and makes again"},
	{"store-lease-keepalive", Error | Kill, "a lease's renewal (etcd: each keep-alive answer; bbolt: every third of the TTL): error stops the renewals, so the lease is lost (Done closes, its records go a TTL later)"},

	// The router.
	{"router-before-swap", Error | Sleep | Kill, "Router.Swap, before the new table is built: the routes unchanged (sleep: the switch comes late)"},

	// The supervisor: launches and run records.
	{"launch-before-start", hitActions, "a launch, before the process starts"},
	{"launch-after-start", hitActions, "a launch, after the process started, before its run record is written: a process no record names"},
	{"launch-after-record", hitActions, "a launch, after its run record is written"},
	{"supervisor-before-record", Error | Sleep | Kill, "a run record's write (ROOT/run/KEY.json), before it: error leaves the process running with no record"},
	{"supervisor-before-record-remove", Error | Sleep | Kill, "a run record's removal after its process stopped: error leaves a record naming a process that is gone"},

	{"credentials-after-write", Error | Sleep | Kill, "a launch's credentials (decrypted secrets) written to CREDENTIALS_DIRECTORY, before the directory is closed to the service's user and the process starts: plaintext on a memory-backed file that no process uses yet"},

	// GC roots (internal/nix: Roots).
	{"gcroots-before-pin", Error | Sleep | Kill, "Roots.Pin (a version's preparation), before its roots are made: the version's store paths unpinned"},
	{"gcroots-after-pin", Error | Sleep | Kill, "Roots.Pin, its roots made, the caller not told: roots of a version that may never start"},
	{"gcroots-before-prune", Error | Sleep | Kill, "Roots.Prune (gc, env rm, a start), before the first root no kept generation or process holds is removed: every root kept"},

	// Databases (internal/daemon: a version's preparation).
	{"db-before-provision", Error | Sleep | Kill, "a service's database, its record written, before the role and database are made in PostgreSQL: a record naming a database not there yet"},
	{"db-after-provision", Error | Sleep | Kill, "a service's database, the role and database made, before the preparation goes on: the caller not told"},

	// Certificates (internal/acme: the store as certmagic's Storage).
	{"acme-before-store", Error | Sleep | Kill, "a certificate's (or key's, or ACME account's) write to the store, before its transaction: nothing stored, certmagic told it failed"},

	// Files replaced atomically (run records, secrets, database records, certificates).
	{"atomicfile-before-rename", Error | Sleep | Kill, "atomicfile.WriteFile, the temporary file written and synced, before the rename: the old content stays"},
	{"atomicfile-after-rename", Error | Sleep | Kill, "atomicfile.WriteFile, after the rename, before the directory's sync: the new content there, the caller not told"},

	// The deploy engine: what it writes for the nodes to follow.
	{"engine-before-desired", Error | Sleep | Kill, "the engine's write of every node's Desired (a stage, a withdrawal, a restart, a stop, gc), before it: nothing asked of the nodes"},
	{"engine-before-commit", Error | Sleep | Kill, "a commit or switch (deploy, rollback, switch back, a window's end, env rm), before its transaction: nothing moved"},
	{"engine-after-commit", hitActions, "a commit or switch, after its transaction, before the engine learns its revision and waits for the routers"},

	// The nodes: following the store.
	{"node-before-reconcile", hitActions, "a node's follower, a new state read, before the agent makes it run (sleep: the node follows late)"},
	{"node-after-campaign", hitActions, "hostel serve's start, the engine's leadership won with the node's new lease, before the node reports (its record names that lease) or the leadership is recorded"},
	{"node-before-report", Error | Sleep | Kill, "a node's report of its instances, before the write: error leaves the last reports in the store (the next look writes them)"},

	// Release steps: once per deployment.
	{"release-claimed", hitActions, "a release step claimed in the store, before it runs"},
	{"release-ran", hitActions, "a release step ran, before its record and the end of its claim are written"},

	// The daemon.
	{"api-socket-bound", hitActions, "hostel serve's start, the API socket bound, before anything is adopted or resumed"},
	{"holder-after-spawn", hitActions, "hostel serve's start, the socket holder's process forked with the listening sockets, before it answered: a daemon dead there leaves a holder still starting"},
	{"env-rm-after-drop", hitActions, "an environment's removal, dropped from the store, before its routes and instances go"},
	{"env-rm-before-certs", hitActions, "an environment's removal, its data swept, before its certificates are removed"},
}

// Catalogue returns every failpoint, by area.
func Catalogue() []Point {
	return append([]Point(nil), catalogue...)
}

// Lookup returns the point named name.
func Lookup(name string) (Point, bool) {
	for _, p := range catalogue {
		if p.Name == name {
			return p, true
		}
	}
	return Point{}, false
}
