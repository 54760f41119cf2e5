// The OHIF app-config.js that points the viewer at a Kura server. It replaces the dist's own
// default (config/default.js of @ohif/app, which points at OHIF's public demo server) and keeps
// its shape: window.config with dataSources / defaultDataSourceName (OHIF v3).

export function appConfig(dicomwebRoot) {
  const configuration = {
    friendlyName: 'Kura',
    name: 'kura',
    wadoUriRoot: dicomwebRoot,
    qidoRoot: dicomwebRoot,
    wadoRoot: dicomwebRoot,
    qidoSupportsIncludeField: true,
    imageRendering: 'wadors',
    thumbnailRendering: 'wadors',
    enableStudyLazyLoad: true,
    supportsFuzzyMatching: false,
    supportsWildcard: true,
    dicomUploadEnabled: false,
    omitQuotationForMultipartRequest: true,
    bulkDataURI: { enabled: true },
  };
  return `/** @type {AppTypes.Config} */
// Written by Kura's OHIF end-to-end test (tests/ohif): the DICOMweb data source is Kura.
window.config = {
  name: 'kura-e2e',
  routerBasename: '/',
  extensions: [],
  modes: [],
  customizationService: {},
  showStudyList: true,
  maxNumberOfWebWorkers: 2,
  showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false,
  showLoadingIndicator: true,
  strictZSpacingForVolumeViewport: true,
  investigationalUseDialog: { option: 'never' },
  maxNumRequests: { interaction: 100, thumbnail: 5, prefetch: 10 },
  showErrorDetails: 'always',
  defaultDataSourceName: 'dicomweb',
  dataSources: [
    {
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: 'dicomweb',
      configuration: ${JSON.stringify(configuration, null, 2).replace(/\n/g, '\n      ')},
    },
  ],
};
`;
}
