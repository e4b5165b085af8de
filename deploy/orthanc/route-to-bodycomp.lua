-- Orthanc → bodycomp routing: send each CT series to the bodycomp node once it is stable.
--
-- Install: add this file to "LuaScripts" in orthanc.json, declare the node in "DicomModalities"
-- under the name in BODYCOMP_MODALITY below, and declare bodycomp's AE so Orthanc accepts the
-- results it sends back (see orthanc.json next to this file).
--
-- Why OnStableSeries and the REST route: Orthanc calls OnStableSeries once a series has had no new
-- instance for "StableAge" seconds. Lua's SendToModality() takes a single instance ID, so a
-- series is routed through the REST API, POST /modalities/{id}/store, as one asynchronous Orthanc
-- job (retried and visible under /jobs) that sends the whole series over one association.
--
-- A late instance makes Orthanc fire OnStableSeries again and re-send the whole series. That is
-- safe: bodycomp recognises instances it already holds (same SOP Instance UID, same content) and
-- analyses a series again only if its content changed.

local BODYCOMP_MODALITY = 'bodycomp'   -- the key of the node in "DicomModalities"
local MODALITIES = { CT = true }       -- what the node analyses; other series are not sent

function OnStableSeries(seriesId, tags, metadata)
   local modality = tags['Modality']
   if not MODALITIES[modality] then
      return
   end
   -- The JSON body is written out: DumpJson() turns a Lua list into an object, which Orthanc
   -- refuses ("Bad file format"). Orthanc IDs are hex digits and dashes, safe in a JSON string.
   local body = '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}'
   RestApiPost('/modalities/' .. BODYCOMP_MODALITY .. '/store', body)
   print('bodycomp: routed stable ' .. modality .. ' series ' .. seriesId .. ' to ' .. BODYCOMP_MODALITY)
end
