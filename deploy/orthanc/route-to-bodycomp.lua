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
--
-- Corrections (issue #23): a reader's SR (an annotation labelled "L3" saved with OHIF's "Create
-- SR") or edited SEG (3D Slicer, OHIF) in a study that has bodycomp results is routed to the node
-- too, which re-analyses at the marked slice or measures the edited masks and sends a superseding
-- result set. bodycomp's own SEG, SR and overlay (Manufacturer "bodycomp") are never routed back;
-- the node would ignore them anyway (no loops).

local BODYCOMP_MODALITY = 'bodycomp'   -- the key of the node in "DicomModalities"
local MODALITIES = { CT = true }       -- what the node analyses; other series are not sent
local READER_OBJECTS = { SR = true, SEG = true }  -- corrections, in studies with bodycomp results
local BODYCOMP_MANUFACTURER = 'bodycomp'  -- the Manufacturer of the node's own results

-- Whether the series' study holds a result series of bodycomp (the study was analysed).
local function StudyHasBodycompResults(seriesId)
   local study = ParseJson(RestApiGet('/series/' .. seriesId .. '/study'))
   for _, series in ipairs(ParseJson(RestApiGet('/studies/' .. study['ID'] .. '/series'))) do
      if series['MainDicomTags']['Manufacturer'] == BODYCOMP_MANUFACTURER then
         return true
      end
   end
   return false
end

function OnStableSeries(seriesId, tags, metadata)
   local modality = tags['Modality']
   if READER_OBJECTS[modality] then
      if tags['Manufacturer'] == BODYCOMP_MANUFACTURER or not StudyHasBodycompResults(seriesId) then
         return
      end
   elseif not MODALITIES[modality] then
      return
   end
   -- The JSON body is written out: DumpJson() turns a Lua list into an object, which Orthanc
   -- refuses ("Bad file format"). Orthanc IDs are hex digits and dashes, safe in a JSON string.
   local body = '{"Resources": ["' .. seriesId .. '"], "Asynchronous": true}'
   RestApiPost('/modalities/' .. BODYCOMP_MODALITY .. '/store', body)
   print('bodycomp: routed stable ' .. modality .. ' series ' .. seriesId .. ' to ' .. BODYCOMP_MODALITY)
end
