// The studies the OHIF test stores in Kura, and what the study list should show for them.

import { ctStudy } from './dicom.mjs';

export function testStudies() {
  return [
    ctStudy({
      patientName: 'Kuratest^Alice',
      patientId: 'KURA-OHIF-001',
      birthDate: '19800214',
      sex: 'F',
      studyDate: '20240115',
      studyTime: '093000',
      description: 'Kura OHIF Head CT',
      accession: 'KOA0001',
      seriesDescription: 'Head axial 2.5mm',
      slices: 10,
    }),
    ctStudy({
      patientName: 'Kuratest^Bob',
      patientId: 'KURA-OHIF-002',
      birthDate: '19751103',
      sex: 'M',
      studyDate: '20230620',
      studyTime: '141500',
      description: 'Kura OHIF Chest CT',
      accession: 'KOA0002',
      seriesDescription: 'Chest axial 2.5mm',
      slices: 12,
    }),
  ];
}
