-- Argo CD health check for llamaduo.dev/LlamaDuoMigration.
-- Install it under resource.customizations.health.llamaduo.dev_LlamaDuoMigration in argocd-cm
-- (docs/gitops.md). It reads the kstatus conditions the operator writes (Ready, Reconciling,
-- Stalled) and the phase, and never reports Healthy before the status describes the current
-- generation.
local hs = {}

local function condition(obj, type_)
  if obj.status == nil or obj.status.conditions == nil then
    return nil
  end
  for _, c in ipairs(obj.status.conditions) do
    if c.type == type_ then
      return c
    end
  end
  return nil
end

if obj.status == nil or obj.status.phase == nil then
  hs.status = "Progressing"
  hs.message = "Waiting for the llamaduo operator to pick up the migration"
  return hs
end

local generation = obj.metadata.generation
local observed = obj.status.observedGeneration
if generation ~= nil and (observed == nil or observed < generation) then
  hs.status = "Progressing"
  hs.message = "The operator has not yet observed generation " .. tostring(generation)
  return hs
end

local stalled = condition(obj, "Stalled")
if stalled ~= nil and stalled.status == "True" then
  hs.status = "Degraded"
  hs.message = stalled.message or stalled.reason or "Stalled"
  return hs
end

local phase = obj.status.phase
if phase == "Failed" then
  hs.status = "Degraded"
  hs.message = obj.status.message or "The migration stopped before reaching its target"
  return hs
end

if phase == "Suspended" then
  hs.status = "Suspended"
  hs.message = obj.status.message or "spec.suspend is true"
  return hs
end

local ready = condition(obj, "Ready")
if phase == "Succeeded" and ready ~= nil and ready.status == "True" then
  hs.status = "Healthy"
  hs.message = ready.message or "Target reached"
  return hs
end

-- Target reached but the served endpoint is not up yet: the operator keeps Ready=False (with
-- Reconciling=True) until the Deployment is available.
if phase == "Succeeded" and ready ~= nil then
  hs.status = "Progressing"
  hs.message = ready.message or "Waiting for the served endpoint"
  return hs
end

hs.status = "Progressing"
local round = obj.status.round or 0
hs.message = phase .. " (round " .. tostring(round) .. ")"
if obj.status.message ~= nil then
  hs.message = hs.message .. ": " .. obj.status.message
end
return hs
