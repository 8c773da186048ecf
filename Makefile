# hostel — see README.md.
GO ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X hostel/internal/cli.Version=$(VERSION)

.PHONY: loadtest held build examples demo demo-stop test test-e2e test-rest test-etcd test-short chaos bench fuzz vet clean deps

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/hostel ./cmd/hostel

examples:
	scripts/build-examples.sh

demo: build examples
	scripts/demo.sh

demo-stop:
	-@bin/hostel --root $(CURDIR)/.demo shutdown >/dev/null 2>&1 && echo "stopped the demo services and daemon" || { [ -f .demo/daemon.pid ] && kill $$(cat .demo/daemon.pid) && echo "stopped the demo daemon"; }; rm -f .demo/daemon.pid
	-@scripts/demo-postgres.sh .demo stop

vet:
	$(GO) vet ./...
	$(GO) vet -tags failpoints ./...
	@test -z "$$(gofmt -l cmd internal examples bench test 2>/dev/null)" || { gofmt -l cmd internal examples bench test; echo "gofmt needed"; exit 1; }

# What the tests need from Debian's packages (Nix, PostgreSQL 15, OpenSSH,
# Pebble …), installed if missing.
deps:
	scripts/install-deps.sh test

# Every test, the concurrent parts under the race detector.
# The router's and the front end's tests run twice: with the front end's event loops and with
# a goroutine per connection (the path TLS and hand-overs take).
# The failpoints' own tests (files with //go:build failpoints, tests named *Failpoint*) run in a
# build with the tag (docs/failpoints.md); test/e2e builds its hostel with it by itself. Then test-etcd.
# The end-to-end suite, which mostly waits on processes and sockets, runs beside the rest.
test: deps vet
	@$(MAKE) --no-print-directory -j2 test-e2e test-rest

# Its cluster under faults (TestClusterChaos) takes two rounds of a seed that draws a cut and a
# daemon killed with its services left running; make chaos draws 100 rounds of a random one.
test-e2e:
	$(GO) test -race -count=1 -timeout 14m ./test/e2e/ -args -chaos-seed 6983666585250894189

test-rest:
	$(GO) test -race -count=1 -timeout 10m $$($(GO) list ./... | grep -v /test/e2e)
	$(GO) test -race -count=1 -timeout 5m ./internal/router/ ./internal/front/ -args -front-loops=-1
	$(GO) test -race -count=1 -timeout 5m -tags failpoints ./internal/failpoint/
	$(GO) test -race -count=1 -timeout 5m -tags failpoints -run Failpoint $(FAILPOINT_PKGS)
	@$(MAKE) --no-print-directory test-etcd

# The packages with failpoint tests.
FAILPOINT_PKGS := ./internal/acme/ ./internal/atomicfile/ ./internal/nix/ ./internal/router/ ./internal/supervisor/ ./internal/store/...

# Every failpoint of the catalogue with every action it takes, on bbolt and on etcd, under traffic;
# 1,000 kill -9 at random times of deploys, rollbacks, gc and starts, on bbolt then on etcd
# (TestCrashAnyTime; -crash-seed S replays a run); then a cluster of three under 100 random
# faults (TestClusterChaos; -chaos-seed S replays a run).
chaos: deps
	$(GO) test -count=1 -timeout 60m -run '^(TestRobustness|TestMoveToEtcdCutShort|TestSickServiceNeverStopsTheDaemon|TestDatabaseProvisionCutShort)$$' ./test/e2e/ -args -chaos
	$(GO) test -count=1 -timeout 60m -run '^TestCrashAnyTime$$' ./test/e2e/ -args -crashes 500
	HOSTEL_TEST_STORE=etcd $(GO) test -count=1 -timeout 60m -run '^TestCrashAnyTime$$' ./test/e2e/ -args -crashes 500
	$(GO) test -count=1 -timeout 60m -run '^TestClusterChaos$$' ./test/e2e/ -args -chaos-rounds 100

# The end-to-end suite's core: deploys, restarts (SIGTERM, SIGKILL), confirm windows and
# switches back, sleep and wake, previews, crashes during launches, sick services, pauses.
E2E_CORE := TestDeployStory|TestOneChangeOfTwenty|TestFailedDeployChangesNothing|TestRestartDaemon|TestDaemonRestartKeepsServices|TestKilledInConfirmWindow|TestConfirmWindowLeavesDaemonFree|TestResumedWindowSwitchesBackFromSickVersion|TestUnhealthyAfterWindowRestarts|TestIdleSleepsAndWakes|TestPauseResumeCLI|TestDeployTouchesSleepingService|TestIdleAsleepAcrossRestart|TestPreviewSleeps|TestPreviewOneLeafOfTwenty|TestPreviewRemovalCrash|TestCrashDuringLaunch|TestSickServiceNeverStopsTheDaemon|TestSickServiceRestartAndDeployTryAgain|TestPauseAcrossDeployAndRestart|TestExclusiveDeploy|TestZeroDowntime

# The deploy engine's and the nodes' tests and the end-to-end core again, on an etcd member
# (HOSTEL_TEST_STORE=etcd: in the test's process; the daemon with --etcd-embed) instead of
# bbolt; two packages at a time, as `go test ./...` runs them.
test-etcd:
	HOSTEL_TEST_STORE=etcd $(GO) test -race -count=1 -p 1 -timeout 5m ./internal/deploy/ ./internal/node/ & engine=$$!; \
	HOSTEL_TEST_STORE=etcd $(GO) test -race -count=1 -timeout 10m -run '^($(E2E_CORE))$$' ./test/e2e/; e2e=$$?; \
	wait $$engine && exit $$e2e

bench: build
	scripts/install-deps.sh bench
	$(GO) test -run '^$$' -bench . -benchmem ./internal/plan/
	$(GO) test -run '^$$' -bench Place10kOn1k -benchmem ./internal/place/
	$(GO) test -run '^$$' -bench Placements -benchtime 2s ./internal/store/etcd/
	$(GO) run ./bench/router
	$(GO) run ./bench/previews -hostel bin/hostel
	$(GO) run ./bench/callable -hostel bin/hostel
	$(GO) run ./bench/store -hostel bin/hostel
	$(GO) run ./bench/held -hostel bin/hostel
	$(GO) test -run '^$$' -bench Deploy -benchtime 20x ./internal/deploy/
	$(GO) run ./bench/deploy -hostel bin/hostel
	$(GO) run ./bench/nixcache -mb 200 -rounds 7
	$(GO) test -count=1 -run '^TestClusterOfThree$$' -v ./test/e2e/ -args -redeploys 20 | grep -E 'skew|requests through|^(ok|FAIL|---)'
	$(GO) test -count=1 -timeout 30m -run '^TestClusterFailover$$' -v ./test/e2e/ -args -kills 20 | grep -E 'died|failover over|drain of|^(ok|FAIL|---)'

# Zero downtime under load: 50 deploys of two services at 500 req/s; then 50 upgrades of the
# daemon (hostel upgrade) and 20 kill -9s of it under the same load.
loadtest: build
	$(GO) run ./bench/loadtest -hostel bin/hostel -deploys 50 -rate 500
	$(GO) run ./bench/loadtest -hostel bin/hostel -deploys 20 -rate 500 -exclusive
	$(GO) run ./bench/loadtest -hostel bin/hostel -deploys 30 -rate 500 -previews
	$(GO) run ./bench/loadtest -hostel bin/hostel -upgrades 50 -rate 500
	$(GO) run ./bench/loadtest -hostel bin/hostel -kills 20 -rate 500

# Held requests (issue 19): a 2 GB upload, 500 uploads of 1.1 MB and 1,000 heads just under
# the limit, to a paused service, beside nginx (apt-get install nginx); as root.
held: build
	$(GO) run ./bench/held -hostel bin/hostel

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 30s ./internal/spec/
	$(GO) test -run '^$$' -fuzz FuzzExpandArg -fuzztime 30s ./internal/spec/
	$(GO) test -run '^$$' -fuzz FuzzPlan -fuzztime 30s ./internal/plan/
	$(GO) test -run '^$$' -fuzz FuzzMake -fuzztime 30s ./internal/place/
	$(GO) test -run '^$$' -fuzz FuzzHostMatch -fuzztime 30s ./internal/router/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRequest$$' -fuzztime 30s ./internal/front/
	$(GO) test -run '^$$' -fuzz '^FuzzCheckHead$$' -fuzztime 30s ./internal/front/
	$(GO) test -run '^$$' -fuzz '^FuzzHeadScanner$$' -fuzztime 30s ./internal/front/
	$(GO) test -run '^$$' -fuzz FuzzParseNarInfo -fuzztime 30s ./internal/nix/

clean:
	rm -rf bin examples/monoliths/build
