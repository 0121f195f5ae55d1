# shellcheck shell=bash
# Sourced by tests/operator.sh (its helpers, namespace, teacher, podrunner and operator are
# running): serving a migration that stopped below its target, with `serving.when: best`.
#   - a migration whose target (100) round 1 cannot reach, stop.maxRounds 1: Failed on
#     MaxRoundsReached, with status.best = round 1;
#   - the operator applies the Deployment and Service `best-serve` (controller-owned, the best
#     round's model in --model), status.endpoint names the Service, Serving becomes True
#     (Available) with a message saying the model is below the target, while Ready stays False
#     and Stalled True with the stop (the migration failed, whatever is served);
#   - the Deployment's pod is created by the real ReplicaSet controller, admitted under Pod
#     Security "restricted", bound by the scheduler, and its `llamaduo-trainer serve` is run by
#     podrunner on the host (at $serve_listen, see tests/stage.sh): it answers /health,
#     /v1/models and a chat completion under the migration's name.
# kwok marks pods Ready without running their probes, so Serving=True here says the Deployment
# rolled out, not that the model loaded: the request is what proves the server serves.
# Needs: serve_listen (the host address podrunner's serve processes listen on).
: "${serve_listen:?operator.sh sets serve_listen}"

check "serving.when: best: a migration stopped on MaxRoundsReached serves its best round"
migration best "$teacher_url" |
  sed -e 's/^  stop: .*/  stop: {maxRounds: 1, plateauRounds: 3, stageRetries: 1}/' \
    -e '$a\  serving: {enabled: true, when: best}' | kubectl apply -f - >/dev/null
wait_migration best "phase Failed (MaxRoundsReached)" '.status.phase == "Failed"'
m=$(mig best)
root="file:///artifacts/$ns/best/$(mq best .metadata.uid)"
jq -e --arg root "$root" '.status
  | (.message | startswith("stop.maxRounds (1) reached")) and .best.round == 1
  and .best.modelUri == ($root + "/round-1/model")
  and (.conditions[] | select(.type == "Stalled") | .status == "True" and .reason == "MaxRoundsReached")' \
  <<<"$m" >/dev/null || fail "status: $(jq -c '.status | {message, best, conditions}' <<<"$m")"
model=$(jq -r .status.best.modelUri <<<"$m")
uid=$(mq best .metadata.uid)
eventually 60 "Deployment and Service best-serve" kubectl get deployment/best-serve service/best-serve -n "$ns"
d=$(kubectl get deployment best-serve -n "$ns" -o json)
jq -e --arg uid "$uid" --arg model "$model" '
  (.metadata.ownerReferences[0] | .uid == $uid and .controller)
  and .metadata.annotations["llamaduo.dev/model-round"] == "1"
  and (.spec.template.spec.containers[0] | .command == ["llamaduo-trainer", "serve"]
       and .args[0:2] == ["--model", $model] and (.args | index("--base")) == null
       and .args[2:4] == ["--served-model-name", "best"])' <<<"$d" >/dev/null ||
  fail "Deployment best-serve: $(jq -c '{o: .metadata.ownerReferences, a: .metadata.annotations, c: .spec.template.spec.containers[0] | {command, args}}' <<<"$d")"
svc=$(kubectl get service best-serve -n "$ns" -o json)
jq -e --arg uid "$uid" '(.metadata.ownerReferences[0] | .uid == $uid and .controller)
  and .spec.type == "ClusterIP" and .spec.ports == [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"}]
  and .spec.selector["llamaduo.dev/migration"] == "best"' <<<"$svc" >/dev/null ||
  fail "Service best-serve: $(jq -c '{o: .metadata.ownerReferences, s: .spec}' <<<"$svc")"
# (The condition names the phase: wait_migration fails early on a Failed phase it was not told of.)
wait_migration best "Serving=True (Available)" '.status.phase == "Failed"
  and ([.status.conditions[]? | select(.type == "Serving" and .status == "True" and .reason == "Available")] | length == 1)'
m=$(mig best)
jq -e --arg ep "http://best-serve.$ns.svc/v1" '.status.endpoint == $ep
  and (.status.conditions[] | select(.type == "Serving") | .message
       | test("serving round 1 .*the best round.s model, below the target .*stopped on MaxRoundsReached"))
  and (.status.conditions[] | select(.type == "Ready") | .status == "False" and .reason == "MaxRoundsReached")
  and (.status.conditions[] | select(.type == "Stalled") | .status == "True")
  and (.status.conditions[] | select(.type == "TargetReached") | .status == "False")' <<<"$m" >/dev/null ||
  fail "status once served: $(jq -c '.status | {endpoint, conditions}' <<<"$m")"
printf '[test]      %s\n' "$(jq -r '.status.conditions[] | select(.type == "Serving") | .message' <<<"$m")" >&2
pods=$(kubectl get pods -n "$ns" -l app.kubernetes.io/component=serve,llamaduo.dev/migration=best -o json)
jq -e --arg node "$node" '(.items | length) == 1 and (.items[0] | .spec.nodeName == $node
  and .status.phase == "Running" and .spec.automountServiceAccountToken == false
  and .metadata.ownerReferences[0].kind == "ReplicaSet")' <<<"$pods" >/dev/null ||
  fail "serving pods: $(jq -c '[.items[] | {n: .metadata.name, node: .spec.nodeName, phase: .status.phase}]' <<<"$pods")"
[[ $(event_count "$(events_of best)" Normal ServingStarted) == 1 ]] ||
  fail "expected 1 Normal ServingStarted Event:"$'\n'"$(events_of best)"

if [[ " $E2E_REAL_STAGES " == *" train "* ]]; then
  check "a real request through the serving pod's process answers with the best round's model"
  base="http://$serve_listen"
  eventually 120 "the serving process at $base/health (model loaded)" curl -fsS -o /dev/null "$base/health"
  grep -q "best-serve-.*started pid .*serve" "$work/podrunner.log" ||
    fail "podrunner did not start the serving pod's process: $(grep best-serve "$work/podrunner.log" | tail -3)"
  models=$(curl -fsS "$base/v1/models") || fail "GET /v1/models failed"
  jq -e '[.data[].id] == ["best"]' <<<"$models" >/dev/null || fail "/v1/models: $models"
  reply=$(curl -sS -w '\n%{http_code}' -H 'content-type: application/json' "$base/v1/chat/completions" \
    -d '{"model": "best", "messages": [{"role": "user", "content": "My parcel never arrived."}],
         "max_tokens": 8, "temperature": 0}') || fail "POST /v1/chat/completions failed"
  code=$(tail -n1 <<<"$reply"); body=$(sed '$d' <<<"$reply")
  [[ "$code" == 200 ]] || fail "chat completion answered $code: $body"
  jq -e '.model == "best" and .choices[0].message.role == "assistant"
    and (.choices[0].message.content | type) == "string" and (.choices[0].finish_reason | type) == "string"
    and (.usage.completion_tokens | type) == "number"' \
    <<<"$body" >/dev/null || fail "chat completion: $body"
  printf '[test]      answered %s\n' "$(jq -c '{content: .choices[0].message.content, usage}' <<<"$body")" >&2
else
  printf '[test]      skipped the request: train ran as tests/fake-stage.py, whose model no server loads\n' >&2
fi
